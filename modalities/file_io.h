// Bounded, checked file access for everything mmfl reads from users or writes to a run
// directory: reads refuse directories, devices and FIFOs and absurd sizes before allocating;
// writes check every call (a full disk is an error, never a silently empty file).
#pragma once

#include <cstdint>
#include <string>

namespace mmfl::modalities {

// Throws mmfl::Error naming `path` unless it is a regular file of at most `max_bytes` bytes;
// `what` names the kind of file in the message ("config file", "IDX file", ...). Returns its size.
uint64_t check_regular_file(const std::string& path, uint64_t max_bytes, const char* what);

// The whole of a regular file of at most `max_bytes` bytes.
std::string read_regular_file(const std::string& path, uint64_t max_bytes, const char* what);

// A regular file opened for positional reads of parts of it (large files read piece by piece,
// each piece straight into its destination). Every read is checked against the size seen at
// open, and a short read (the file shrank) is an error naming the file and the byte offset.
class RegularFileReader {
 public:
  RegularFileReader(const std::string& path, uint64_t max_bytes, const char* what);
  ~RegularFileReader();
  RegularFileReader(const RegularFileReader&) = delete;
  RegularFileReader& operator=(const RegularFileReader&) = delete;

  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Reads bytes [offset, offset + n) into `dst`.
  void read_at(uint64_t offset, void* dst, uint64_t n) const;
  std::string read_at(uint64_t offset, uint64_t n) const;

 private:
  std::string path_;
  const char* what_;
  uint64_t size_ = 0;
  int fd_ = -1;
};

// Writes `bytes` to `path` through `path`.tmp, fsync and rename, checking every call: a crash or
// a full disk leaves either the old file or the new one, never a torn or empty one.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace mmfl::modalities
