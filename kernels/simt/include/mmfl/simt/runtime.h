// The SIMT emulator's plain C++ API, for code that is not compiled with the shim (tests, tools):
// emulated "device" memory is host memory from the emulator's cudaMalloc, and these calls reach it
// and its bookkeeping (allocation table, last error) without any CUDA declarations.
#pragma once

#include <cstddef>
#include <string>

namespace mmfl::simt {

// Device memory of the emulator: 256-byte aligned host memory of exactly `bytes` bytes (so
// AddressSanitizer catches the first byte past the end), registered so that copies can check
// their ranges. Throws mmfl::Error when out of memory.
void* device_alloc(std::size_t bytes);
// Frees what device_alloc or the emulated cudaMalloc returned; nullptr is a no-op. Throws
// mmfl::Error for any other pointer.
void device_free(void* ptr);
// Copies host -> emulated device and back; throw mmfl::Error when the device range is not inside
// one allocation.
void copy_to_device(void* device_dst, const void* host_src, std::size_t bytes);
void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes);
void device_memset(void* device_dst, int value, std::size_t bytes);
// True when [ptr, ptr + bytes) lies inside one live emulated allocation.
bool is_device_range(const void* ptr, std::size_t bytes);
// The emulator runs every launch and copy to completion before returning, so synchronizing only
// checks for a pending error; kept so that test code reads like CUDA code.
void device_synchronize();

// The explanation the emulator attached to the calling thread's most recent error (which kernel,
// which block and thread, what went wrong); empty when none was recorded.
std::string last_error_detail();

// Emulated device properties (an H100 SXM): used for limits and cudaDeviceGetAttribute.
inline constexpr int kMaxThreadsPerBlock = 1024;
inline constexpr int kMaxBlockDimZ = 64;
inline constexpr int kMaxGridDimYZ = 65535;
inline constexpr std::size_t kDefaultDynamicSharedBytes = 48 * 1024;
inline constexpr std::size_t kMaxSharedBytesPerBlockOptin = 227 * 1024;
inline constexpr int kMultiProcessorCount = 132;
inline constexpr int kWarpSize = 32;

}  // namespace mmfl::simt
