// Shared by the fuzz targets: the input as a file (the readers take paths), in an anonymous
// memory file so that no fuzzing run touches the disk.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace mmfl::fuzz {

// A path naming a regular file that holds exactly `size` bytes of `data`.
inline std::string as_file(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("mmfl_fuzz", MFD_CLOEXEC);
  if (fd < 0) std::abort();
  if (ftruncate(fd, 0) != 0) std::abort();
  size_t done = 0;
  while (done < size) {
    const ssize_t n = pwrite(fd, data + done, size - done, off_t(done));
    if (n <= 0) std::abort();
    done += size_t(n);
  }
  return "/proc/self/fd/" + std::to_string(fd);
}

}  // namespace mmfl::fuzz
