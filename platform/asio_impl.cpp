// Asio's non-template code (the scheduler, reactors, socket operations, error categories), compiled
// once for every unit built with ASIO_SEPARATE_COMPILATION (the vantage::asio target).
#include <asio/impl/src.hpp>
