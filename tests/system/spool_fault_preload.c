/* LD_PRELOAD library for the spool I/O fault test: fails the agent's file operations on its spool
 * directory on demand. VANTAGE_FAULT_SPOOL names the spool directory, VANTAGE_FAULT_CONTROL a file
 * that arms a fault when it changes ("<op> <errno> <count>": the next <count> calls of <op> on the
 * spool fail with <errno>; op is open, write, read, sync, rename, unlink or truncate), and every
 * injection appends "<op> <errno>" to VANTAGE_FAULT_LOG. Calls on other files pass through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct timespec control_mtime;
static char armed_op[16];
static int armed_errno;
static long remaining;

/* Whether path (a name relative to dirfd, or absolute) is inside the spool directory. */
static int in_spool(int dirfd, const char* path) {
  const char* spool = getenv("VANTAGE_FAULT_SPOOL");
  if (spool == NULL || path == NULL) return 0;
  char full[2 * PATH_MAX + 2];
  if (path[0] == '/') {
    snprintf(full, sizeof full, "%s", path);
  } else {
    char link[64];
    char dir[PATH_MAX];
    ssize_t n;
    if (dirfd == AT_FDCWD) {
      if (getcwd(dir, sizeof dir) == NULL) return 0;
      n = (ssize_t)strlen(dir);
    } else {
      snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
      n = readlink(link, dir, sizeof dir - 1);
      if (n < 0) return 0;
    }
    dir[n] = '\0';
    snprintf(full, sizeof full, "%s/%s", dir, path);
  }
  return strncmp(full, spool, strlen(spool)) == 0;
}

static int fd_in_spool(int fd) {
  char link[64];
  char target[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, target, sizeof target - 1);
  if (n < 0) return 0;
  target[n] = '\0';
  return in_spool(AT_FDCWD, target);
}

/* 0, or the errno this call of op must fail with. */
static int fault(const char* op) {
  const char* control = getenv("VANTAGE_FAULT_CONTROL");
  if (control == NULL) return 0;
  int err = 0;
  pthread_mutex_lock(&lock);
  struct stat st;
  if (stat(control, &st) == 0 && (st.st_mtim.tv_sec != control_mtime.tv_sec || st.st_mtim.tv_nsec != control_mtime.tv_nsec)) {
    control_mtime = st.st_mtim;
    FILE* f = fopen(control, "r");
    if (f != NULL) {
      if (fscanf(f, "%15s %d %ld", armed_op, &armed_errno, &remaining) != 3) remaining = 0;
      fclose(f);
    }
  }
  if (remaining > 0 && strcmp(op, armed_op) == 0) {
    --remaining;
    err = armed_errno;
    const char* log = getenv("VANTAGE_FAULT_LOG");
    FILE* f = log != NULL ? fopen(log, "a") : NULL;
    if (f != NULL) {
      fprintf(f, "%s %d\n", op, err);
      fclose(f);
    }
  }
  pthread_mutex_unlock(&lock);
  return err;
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))
#define FAIL_IF(cond, op)            \
  do {                               \
    if (cond) {                      \
      const int e_ = fault(op);      \
      if (e_ != 0) {                 \
        errno = e_;                  \
        return -1;                   \
      }                              \
    }                                \
  } while (0)

static mode_t mode_of(int flags, va_list ap) {
  return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_of(flags, ap);
  va_end(ap);
  FAIL_IF(in_spool(AT_FDCWD, path), "open");
  return REAL(open)(path, flags, mode);
}
int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_of(flags, ap);
  va_end(ap);
  FAIL_IF(in_spool(AT_FDCWD, path), "open");
  return REAL(open64)(path, flags, mode);
}
int openat(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_of(flags, ap);
  va_end(ap);
  FAIL_IF(in_spool(dirfd, path), "open");
  return REAL(openat)(dirfd, path, flags, mode);
}
int openat64(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_of(flags, ap);
  va_end(ap);
  FAIL_IF(in_spool(dirfd, path), "open");
  return REAL(openat64)(dirfd, path, flags, mode);
}
ssize_t pwritev(int fd, const struct iovec* iov, int n, off_t off) {
  FAIL_IF(fd_in_spool(fd), "write");
  return REAL(pwritev)(fd, iov, n, off);
}
ssize_t pwritev64(int fd, const struct iovec* iov, int n, off64_t off) {
  FAIL_IF(fd_in_spool(fd), "write");
  return REAL(pwritev64)(fd, iov, n, off);
}
ssize_t pread(int fd, void* buf, size_t n, off_t off) {
  FAIL_IF(fd_in_spool(fd), "read");
  return REAL(pread)(fd, buf, n, off);
}
ssize_t pread64(int fd, void* buf, size_t n, off64_t off) {
  FAIL_IF(fd_in_spool(fd), "read");
  return REAL(pread64)(fd, buf, n, off);
}
int fsync(int fd) {
  FAIL_IF(fd_in_spool(fd), "sync");
  return REAL(fsync)(fd);
}
int fdatasync(int fd) {
  FAIL_IF(fd_in_spool(fd), "sync");
  return REAL(fdatasync)(fd);
}
int renameat(int olddirfd, const char* oldpath, int newdirfd, const char* newpath) {
  FAIL_IF(in_spool(olddirfd, oldpath), "rename");
  return REAL(renameat)(olddirfd, oldpath, newdirfd, newpath);
}
int unlinkat(int dirfd, const char* path, int flags) {
  FAIL_IF(in_spool(dirfd, path), "unlink");
  return REAL(unlinkat)(dirfd, path, flags);
}
int ftruncate(int fd, off_t length) {
  FAIL_IF(fd_in_spool(fd), "truncate");
  return REAL(ftruncate)(fd, length);
}
int ftruncate64(int fd, off64_t length) {
  FAIL_IF(fd_in_spool(fd), "truncate");
  return REAL(ftruncate64)(fd, length);
}
