// An exclusive flock on DIR/.lock for the life of the object, so that two processes never write
// one run or sweep directory at once; the holder's pid is written into the file, and a second
// process is refused with a message naming it.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include "mmfl/error.h"

namespace mmfl::engine {

class DirLock {
 public:
  // what: the directory's kind in messages ("run directory", "sweep directory").
  DirLock(const std::filesystem::path& dir, const std::string& what)
      : path_((dir / ".lock").string()) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      const int err = errno;
      MMFL_FAIL("cannot create the lock file '", path_, "': ", std::strerror(err));
    }
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      char buf[32] = {0};
      const ssize_t n = ::pread(fd_, buf, sizeof(buf) - 1, 0);
      ::close(fd_);
      fd_ = -1;
      const std::string pid = n > 0 ? std::string(buf, size_t(n)) : "unknown";
      MMFL_FAIL(what, " '", dir.string(), "' is in use by process ", pid.substr(0, pid.find('\n')),
                " (it holds '", path_, "'); wait for it to finish or stop it first");
    }
    const std::string me = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != ssize_t(me.size())) {
      const int err = errno;
      ::close(fd_);
      fd_ = -1;
      MMFL_FAIL("cannot write the lock file '", path_, "': ", std::strerror(err));
    }
  }
  ~DirLock() {
    if (fd_ >= 0) ::close(fd_);  // closing releases the flock
  }
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace mmfl::engine
