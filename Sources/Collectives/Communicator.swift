import CMPI
import Foundation

/// An MPI call that did not return `MPI_SUCCESS`, with MPI's own description of the code.
public struct MPIError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let code: Int32
    public let message: String
    public var description: String { "\(call) failed: \(message) (MPI error \(code))" }
}

/// The processes of one job started by `mpiexec` (MPI_COMM_WORLD), and the collectives
/// data-parallel training needs: all-reduce (gradients), all-gather (keys, the shuffle-BN batch),
/// broadcast (rank 0's permutation) and a barrier.
///
/// MPI is initialized once per process with `MPI_THREAD_FUNNELED`: every MPI call comes from the
/// thread that created the communicator (the compute thread, as for oneDNN and OpenMP). Errors
/// are returned, not fatal (`MPI_ERRORS_RETURN`), so a failed collective surfaces as an `MPIError`.
/// Not `Sendable`: the communicator is confined to its thread like a training run's tensors.
public final class Communicator {
    public let rank: Int
    public let size: Int
    let comm: MPI_Comm

    private init(comm: MPI_Comm) throws {
        self.comm = comm
        var r: Int32 = 0, s: Int32 = 0
        try Self.check(MPI_Comm_rank(comm, &r), "MPI_Comm_rank")
        try Self.check(MPI_Comm_size(comm, &s), "MPI_Comm_size")
        rank = Int(r)
        size = Int(s)
    }

    /// Initializes MPI (once per process) and returns the world communicator: under `mpiexec -n N`
    /// N ranks; started without a launcher, a world of one.
    public static func world() throws -> Communicator {
        var initialized: Int32 = 0
        try check(MPI_Initialized(&initialized), "MPI_Initialized")
        if initialized == 0 {
            var provided: Int32 = 0
            try check(MPI_Init_thread(nil, nil, mocod_mpi_thread_funneled(), &provided), "MPI_Init_thread")
            try check(MPI_Comm_set_errhandler(mocod_mpi_comm_world(), mocod_mpi_errors_return()), "MPI_Comm_set_errhandler")
        }
        return try Communicator(comm: mocod_mpi_comm_world())
    }

    /// Ends MPI for this process (after the last collective of every rank).
    public static func finalize() {
        var finalized: Int32 = 0
        MPI_Finalized(&finalized)
        if finalized == 0 { MPI_Finalize() }
    }

    /// Whether an MPI launcher started this process (Open MPI's, MPICH's or Slurm's PMI variables).
    public static func launchedByMPI(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].contains { environment[$0] != nil }
    }

    public func barrier() throws { try Self.check(MPI_Barrier(comm), "MPI_Barrier") }

    /// Sums `values` element-wise across ranks, in place: every rank ends with the same sums.
    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws {
        guard let base = values.baseAddress, !values.isEmpty else { return }
        try Self.check(MPI_Allreduce(mocod_mpi_in_place(), base, Int32(values.count), mocod_mpi_float(), mocod_mpi_sum(), comm),
                       "MPI_Allreduce of \(values.count) floats")
    }

    /// `allReduceSum` over an array.
    public func allReduceSum(_ values: inout [Float]) throws {
        try values.withUnsafeMutableBufferPointer { try allReduceSum($0) }
    }

    /// Concatenates every rank's `local` (all the same length) in rank order into `result`
    /// (`size * local.count` floats), on every rank.
    public func allGather(_ local: UnsafeBufferPointer<Float>, into result: UnsafeMutableBufferPointer<Float>) throws {
        precondition(result.count == local.count * size, "allGather: \(result.count) floats for \(size) x \(local.count)")
        guard !local.isEmpty else { return }
        try Self.check(MPI_Allgather(local.baseAddress, Int32(local.count), mocod_mpi_float(),
                                     result.baseAddress, Int32(local.count), mocod_mpi_float(), comm),
                       "MPI_Allgather of \(local.count) floats")
    }

    /// `allGather` over arrays.
    public func allGather(_ local: [Float]) throws -> [Float] {
        var out = [Float](repeating: 0, count: local.count * size)
        try local.withUnsafeBufferPointer { l in try out.withUnsafeMutableBufferPointer { try allGather(l, into: $0) } }
        return out
    }

    /// Overwrites `bytes` on every rank with `root`'s.
    public func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int = 0) throws {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        try Self.check(MPI_Bcast(base, Int32(bytes.count), mocod_mpi_byte(), Int32(root), comm), "MPI_Bcast of \(bytes.count) bytes")
    }

    /// `broadcast` of an array of plain values (every rank passes an array of the same count).
    public func broadcast<T: BitwiseCopyable>(_ values: inout [T], root: Int = 0) throws {
        try values.withUnsafeMutableBytes { try broadcast($0, root: root) }
    }

    static func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
        guard code != mocod_mpi_success() else { return }
        var buffer = [CChar](repeating: 0, count: 1024)   // MPI_MAX_ERROR_STRING is 256 in Open MPI, 1024 in MPICH
        var length: Int32 = 0
        MPI_Error_string(code, &buffer, &length)
        throw MPIError(call: call(), code: code, message: String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
}

/// Which part of each global batch a rank takes: contiguous blocks in rank order, so that the
/// ranks' parts put together are the batch one process would see (the data order stays a
/// function of the seed alone).
public struct BatchShard: Equatable, Sendable {
    public let rank: Int
    public let ranks: Int
    public let globalBatch: Int

    /// nil when the global batch does not split into equal parts.
    public init?(rank: Int, ranks: Int, globalBatch: Int) {
        guard ranks >= 1, rank >= 0, rank < ranks, globalBatch >= ranks, globalBatch % ranks == 0 else { return nil }
        self.rank = rank; self.ranks = ranks; self.globalBatch = globalBatch
    }

    public var localBatch: Int { globalBatch / ranks }
    /// Positions within the global batch this rank takes.
    public var range: Range<Int> { (rank * localBatch)..<((rank + 1) * localBatch) }
}
