// The spool's file operations on the real file system.
#include "agent/ship/spool_files.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

static_assert(sizeof(off_t) == 8, "build with -D_FILE_OFFSET_BITS=64");

namespace vantage::agent::ship {

const char* to_string(SpoolOp op) {
  switch (op) {
    case SpoolOp::kMkdir: return "mkdir";
    case SpoolOp::kOpen: return "open";
    case SpoolOp::kList: return "list";
    case SpoolOp::kStat: return "stat";
    case SpoolOp::kRead: return "read";
    case SpoolOp::kWrite: return "write";
    case SpoolOp::kSync: return "sync";
    case SpoolOp::kRename: return "rename";
    case SpoolOp::kUnlink: return "unlink";
    case SpoolOp::kTruncate: return "truncate";
  }
  return "?";
}

int SpoolFiles::create_directories(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    errno = ec.value();
    return -1;
  }
  return 0;
}

int SpoolFiles::open(const char* path, int flags, mode_t mode) { return ::open(path, flags, mode); }

int SpoolFiles::openat(int dir_fd, const char* name, int flags, mode_t mode) {
  return ::openat(dir_fd, name, flags, mode);
}

int SpoolFiles::list(const std::filesystem::path& dir, std::vector<std::string>& names) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return -1;
  errno = 0;
  while (const dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
  const int err = errno;
  ::closedir(d);
  errno = err;
  return err == 0 ? 0 : -1;
}

int SpoolFiles::size(int fd, std::uint64_t& bytes) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return -1;
  bytes = static_cast<std::uint64_t>(st.st_size);
  return 0;
}

ssize_t SpoolFiles::pread(int fd, void* buf, std::size_t n, std::uint64_t offset) {
  return ::pread(fd, buf, n, static_cast<off_t>(offset));
}

ssize_t SpoolFiles::pwritev(int fd, const iovec* iov, int iovcnt, std::uint64_t offset) {
  return ::pwritev(fd, iov, iovcnt, static_cast<off_t>(offset));
}

int SpoolFiles::sync(int fd, bool data_only) { return data_only ? ::fdatasync(fd) : ::fsync(fd); }

int SpoolFiles::renameat(int dir_fd, const char* from, const char* to) {
  return ::renameat(dir_fd, from, dir_fd, to);
}

int SpoolFiles::unlinkat(int dir_fd, const char* name) { return ::unlinkat(dir_fd, name, 0); }

int SpoolFiles::ftruncate(int fd, std::uint64_t length) { return ::ftruncate(fd, static_cast<off_t>(length)); }

SpoolFiles& posix_spool_files() {
  static SpoolFiles files;
  return files;
}

}  // namespace vantage::agent::ship
