// The spool's window on the file system: every file operation the spool makes goes through a
// SpoolFiles, so tests can make any of them fail (disk full, I/O error, short write, hung fsync).
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace vantage::agent::ship {

// The kinds of operation, for fault injection and counting.
enum class SpoolOp : std::uint8_t {
  kMkdir,     // create_directories
  kOpen,      // open, openat
  kList,      // list (readdir)
  kStat,      // size (fstat)
  kRead,      // pread
  kWrite,     // pwritev
  kSync,      // fsync, fdatasync (files and the directory)
  kRename,    // renameat
  kUnlink,    // unlinkat
  kTruncate,  // ftruncate
};
inline constexpr std::size_t kSpoolOpCount = 10;
[[nodiscard]] const char* to_string(SpoolOp op);

// The real file system (POSIX calls). Every call returns what its POSIX namesake returns, with
// errno set on failure; offsets and sizes are 64-bit whatever the platform's off_t. Calls may come
// from two threads at once (the spool's and its sync worker, which only calls sync), so an
// override that keeps state must lock.
class SpoolFiles {
 public:
  virtual ~SpoolFiles() = default;
  virtual int create_directories(const std::filesystem::path& dir);  // 0, or -1 with errno
  virtual int open(const char* path, int flags, mode_t mode);
  virtual int openat(int dir_fd, const char* name, int flags, mode_t mode);
  virtual int list(const std::filesystem::path& dir, std::vector<std::string>& names);  // 0 or -1
  virtual int size(int fd, std::uint64_t& bytes);  // 0 or -1
  virtual ssize_t pread(int fd, void* buf, std::size_t n, std::uint64_t offset);
  virtual ssize_t pwritev(int fd, const iovec* iov, int iovcnt, std::uint64_t offset);
  virtual int sync(int fd, bool data_only);  // fdatasync when data_only, else fsync
  virtual int renameat(int dir_fd, const char* from, const char* to);
  virtual int unlinkat(int dir_fd, const char* name);
  virtual int ftruncate(int fd, std::uint64_t length);
};

// The shared POSIX instance a spool uses unless its config names another.
[[nodiscard]] SpoolFiles& posix_spool_files();

}  // namespace vantage::agent::ship
