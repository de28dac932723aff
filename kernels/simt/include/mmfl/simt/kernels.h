// The kernels of kernels/cuda built for the SIMT emulator (test support only): namespace
// mmfl::kernels::simt has the device API of namespace cuda, declared from the same .inc files, with
// "device" memory from the emulator (mmfl::simt::device_alloc or the emulated cudaMalloc).
#pragma once

#include "mmfl/kernels/aggregate.h"
#include "mmfl/kernels/bank_ce.h"
#include "mmfl/kernels/infonce.h"
#include "mmfl/kernels/moe.h"
#include "mmfl/kernels/multi_lora.h"
#include "mmfl/kernels/sparse.h"

namespace mmfl::kernels::simt {
#include "mmfl/kernels/device/aggregate.inc"
#include "mmfl/kernels/device/bank_ce.inc"
#include "mmfl/kernels/device/infonce.inc"
#include "mmfl/kernels/device/moe.inc"
#include "mmfl/kernels/device/multi_lora.inc"
#include "mmfl/kernels/device/sparse.inc"
}  // namespace mmfl::kernels::simt
