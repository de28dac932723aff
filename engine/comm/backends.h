// The MPI and NCCL backends behind engine/comm/communicator.h; each is compiled only where its
// library was found (MMFL_HAVE_MPI, MMFL_HAVE_NCCL), and the factories say so otherwise.
#pragma once

#include <memory>

#include "engine/comm/communicator.h"

namespace mmfl::engine::comm::detail {

#ifdef MMFL_HAVE_MPI
inline constexpr bool kHaveMpi = true;
#else
inline constexpr bool kHaveMpi = false;
#endif
#ifdef MMFL_HAVE_NCCL
inline constexpr bool kHaveNccl = true;
#else
inline constexpr bool kHaveNccl = false;
#endif

// MPI_COMM_WORLD (MPI initialized on first use).
std::unique_ptr<Communicator> make_mpi(double timeout_s);
// NCCL over the GPU local_rank % device count, bootstrapped over MPI.
std::unique_ptr<Communicator> make_nccl(double timeout_s);
void mpi_abort(int code);
void mpi_finalize();

}  // namespace mmfl::engine::comm::detail
