#ifndef MOCOD_CMPI_SHIM_H
#define MOCOD_CMPI_SHIM_H
// Open MPI 4.1 (Debian's libopenmpi-dev; include and library paths from pkg-config's ompi-c).
// MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, MPI_IN_PLACE, ...) are macros over
// library symbols, which Swift cannot import; these functions hand them over.
#include <mpi.h>

static inline MPI_Comm mocod_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype mocod_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype mocod_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype mocod_mpi_uint64(void) { return MPI_UINT64_T; }
static inline MPI_Op mocod_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op mocod_mpi_max(void) { return MPI_MAX; }
static inline void *mocod_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline int mocod_mpi_success(void) { return MPI_SUCCESS; }
static inline int mocod_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline MPI_Errhandler mocod_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
#endif
