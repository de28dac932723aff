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

// Writes `bytes` to `path` through `path`.tmp, fsync and rename, checking every call: a crash or
// a full disk leaves either the old file or the new one, never a torn or empty one.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace mmfl::modalities
