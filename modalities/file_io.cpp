#include "modalities/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "mmfl/error.h"

namespace mmfl::modalities {

namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

uint64_t check_regular_file(const std::string& path, uint64_t max_bytes, const char* what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    MMFL_FAIL("cannot open ", what, " '", path, "': ", errno_text(err));
  }
  MMFL_CHECK(!S_ISDIR(st.st_mode), what, " '", path, "' is a directory, not a file");
  MMFL_CHECK(S_ISREG(st.st_mode), what, " '", path,
             "' is not a regular file (a device, FIFO or socket); give the path of a file");
  MMFL_CHECK(uint64_t(st.st_size) <= max_bytes, what, " '", path, "' is ", uint64_t(st.st_size),
             " bytes, more than the ", max_bytes, "-byte limit for a ", what);
  return uint64_t(st.st_size);
}

std::string read_regular_file(const std::string& path, uint64_t max_bytes, const char* what) {
  const uint64_t size = check_regular_file(path, max_bytes, what);
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) {
    const int err = errno;
    MMFL_FAIL("cannot open ", what, " '", path, "': ", errno_text(err));
  }
  // Reads at most max_bytes + 1 so a file that grew after stat() is still caught.
  std::string out(size_t(size), '\0');
  size_t got = 0;
  for (;;) {
    if (got == out.size()) {
      if (out.size() > max_bytes) break;
      out.resize(std::min<uint64_t>(max_bytes + 1, out.size() + 4096));
    }
    const ssize_t n = ::read(f.fd, out.data() + got, out.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      MMFL_FAIL("cannot read ", what, " '", path, "' at byte offset ", got, ": ", errno_text(err));
    }
    if (n == 0) break;
    got += size_t(n);
  }
  MMFL_CHECK(got <= max_bytes, what, " '", path, "' is more than the ", max_bytes,
             "-byte limit for a ", what);
  out.resize(got);
  return out;
}

RegularFileReader::RegularFileReader(const std::string& path, uint64_t max_bytes, const char* what)
    : path_(path), what_(what) {
  size_ = check_regular_file(path, max_bytes, what);
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    const int err = errno;
    MMFL_FAIL("cannot open ", what, " '", path, "': ", errno_text(err));
  }
}

RegularFileReader::~RegularFileReader() {
  if (fd_ >= 0) ::close(fd_);
}

void RegularFileReader::read_at(uint64_t offset, void* dst, uint64_t n) const {
  MMFL_CHECK(offset <= size_ && n <= size_ - offset, what_, " '", path_, "' is truncated: ", n,
             " bytes at byte offset ", offset, " go past its end (", size_, " bytes)");
  auto* out = static_cast<char*>(dst);
  uint64_t got = 0;
  while (got < n) {
    const size_t chunk = size_t(std::min<uint64_t>(n - got, uint64_t(1) << 30));
    const ssize_t r = ::pread(fd_, out + got, chunk, off_t(offset + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      MMFL_FAIL("cannot read ", what_, " '", path_, "' at byte offset ", offset + got, ": ",
                errno_text(err));
    }
    MMFL_CHECK(r > 0, what_, " '", path_, "' is truncated at byte offset ", offset + got,
               " (it shrank while being read)");
    got += uint64_t(r);
  }
}

std::string RegularFileReader::read_at(uint64_t offset, uint64_t n) const {
  MMFL_CHECK(offset <= size_ && n <= size_ - offset, what_, " '", path_, "' is truncated: ", n,
             " bytes at byte offset ", offset, " go past its end (", size_, " bytes)");
  std::string out(size_t(n), '\0');
  read_at(offset, out.data(), n);
  return out;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  auto fail = [&](const char* step, int err) {
    ::unlink(tmp.c_str());
    MMFL_FAIL("cannot write '", path, "' (", step, " '", tmp, "'): ", errno_text(err),
              err == ENOSPC  ? " (disk full)"
              : err == EFBIG ? " (over the file-size limit, ulimit -f)"
                             : "");
  };
  {
    Fd f;
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f.fd < 0) fail("creating", errno);
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(f.fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("writing", n < 0 ? errno : ENOSPC);
      done += size_t(n);
    }
    if (::fsync(f.fd) != 0 && errno != EINVAL) fail("syncing", errno);
    const int fd = f.fd;
    f.fd = -1;
    if (::close(fd) != 0) fail("closing", errno);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("renaming", errno);
  // The rename is durable once the directory is synced; failing to sync it is not fatal.
  const auto dir = std::filesystem::path(path).parent_path();
  Fd d;
  d.fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd >= 0) ::fsync(d.fd);
}

}  // namespace mmfl::modalities
