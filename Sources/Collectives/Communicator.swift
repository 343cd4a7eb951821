import CMPI
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

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

    /// Ends every rank of the job at once (this rank failed alone and the others may be waiting
    /// for it in a collective): `mpiexec` takes them down and exits with `code`.
    public func abort(_ code: Int32) -> Never {
        MPI_Abort(comm, code)
        _exit(code)
    }

    public func barrier() throws { try collective("MPI_Barrier") { MPI_Barrier(comm) } }

    /// Sums `values` element-wise across ranks, in place: every rank ends with the same sums.
    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws {
        guard let base = values.baseAddress, !values.isEmpty else { return }
        try collective("MPI_Allreduce of \(values.count) floats") {
            MPI_Allreduce(mocod_mpi_in_place(), base, Int32(values.count), mocod_mpi_float(), mocod_mpi_sum(), comm)
        }
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
        try collective("MPI_Allgather of \(local.count) floats") {
            MPI_Allgather(local.baseAddress, Int32(local.count), mocod_mpi_float(), result.baseAddress, Int32(local.count), mocod_mpi_float(), comm)
        }
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
        try collective("MPI_Bcast of \(bytes.count) bytes") { MPI_Bcast(base, Int32(bytes.count), mocod_mpi_byte(), Int32(root), comm) }
    }

    /// `broadcast` of an array of plain values (every rank passes an array of the same count).
    public func broadcast<T: BitwiseCopyable>(_ values: inout [T], root: Int = 0) throws {
        try values.withUnsafeMutableBytes { try broadcast($0, root: root) }
    }

    /// Every rank's copy of `root`'s bytes (`bytes` is read on `root` only; the others may pass nil).
    public func broadcastBytes(_ bytes: [UInt8]?, root: Int = 0) throws -> [UInt8] {
        var count = [UInt64(bytes?.count ?? 0)]
        try broadcast(&count, root: root)
        var out = rank == root ? (bytes ?? []) : [UInt8](repeating: 0, count: Int(count[0]))
        try broadcast(&out, root: root)
        return out
    }

    /// Every rank's bytes, in rank order, on every rank (one broadcast per rank: for rare,
    /// small messages such as the names of unusable images).
    public func allGatherBytes(_ bytes: [UInt8]) throws -> [[UInt8]] {
        try (0..<size).map { root in try broadcastBytes(root == rank ? bytes : nil, root: root) }
    }

    /// A failure on some rank, as every rank learns it: the lowest failing rank, its host and its message.
    public struct RankFailure: Error, Equatable, Sendable, CustomStringConvertible {
        public var rank: Int
        public var host: String
        public var message: String
        public var description: String { "on host \(host) (rank \(rank)): \(message)" }
        public init(rank: Int, host: String, message: String) { self.rank = rank; self.host = host; self.message = message }
    }

    /// Agrees across ranks on whether a step every rank took on its own (loading its data, say)
    /// worked: nil when it did on every rank; otherwise the lowest failing rank's host and
    /// message, on every rank. Every rank must call it.
    public func firstFailure(_ localError: String?) throws -> RankFailure? {
        let flags = try allGather([localError == nil ? 0 : 1])
        guard let failing = flags.firstIndex(where: { $0 != 0 }) else { return nil }
        let mine = rank == failing ? Array("\(Self.hostName)\n\(localError ?? "")".utf8) : nil
        let text = String(decoding: try broadcastBytes(mine, root: failing), as: UTF8.self)
        let parts = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
        return RankFailure(rank: failing, host: String(parts[0]), message: parts.count > 1 ? String(parts[1]) : "")
    }

    /// This machine's host name.
    public static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "unknown host" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: - Waiting limit

    /// Set by `limitWaiting`: the watch over this rank's collectives.
    private var watchdog: CollectiveWatchdog?

    /// From now on no collective of this rank may wait longer than `seconds` for the other
    /// ranks: past that the rank reports the collective and its wait on standard error and
    /// exits with status 70, and the launcher (`mpiexec`) takes the job's other ranks down. A
    /// rank that died is noticed by `mpiexec` itself; this covers one that hangs (stopped, a
    /// lost host, a deadlock), which would otherwise hold every other rank forever.
    /// A new limit replaces the last one.
    public func limitWaiting(seconds: Double, onExpiry: (@Sendable (String) -> Void)? = nil) {
        watchdog?.stop()
        let dog = CollectiveWatchdog(limit: seconds, rank: rank, host: Self.hostName, onExpiry: onExpiry ?? Self.exitForHang)
        watchdog = dog
        dog.start()
    }

    /// Stops the watch (before `finalize`, or when the run is over).
    public func stopWatching() { watchdog?.stop(); watchdog = nil }

    @Sendable static func exitForHang(_ report: String) {
        let line = Array((report + "\n").utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        _exit(70)
    }

    /// Runs one MPI collective under the watch, and turns its error code into an `MPIError`.
    func collective(_ call: @autoclosure () -> String, _ body: () -> Int32) throws {
        watchdog?.enter(call())
        let code = body()
        watchdog?.leave()
        try Self.check(code, call())
    }

    static func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
        guard code != mocod_mpi_success() else { return }
        var buffer = [CChar](repeating: 0, count: 1024)   // MPI_MAX_ERROR_STRING is 256 in Open MPI, 1024 in MPICH
        var length: Int32 = 0
        MPI_Error_string(code, &buffer, &length)
        throw MPIError(call: call(), code: code, message: String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
}

/// The watch over one rank's collectives: the time the current one began (0: none runs), read
/// by a thread of its own every quarter second. Pure waiting arithmetic is `WaitLimit`.
final class CollectiveWatchdog: Sendable {
    let limit: WaitLimit
    let rank: Int
    let host: String
    let onExpiry: @Sendable (String) -> Void
    private let enteredAt = Atomic<Int64>(0)
    private let running = Atomic<Bool>(false)
    private let current = Mutex<String>("")

    init(limit seconds: Double, rank: Int, host: String, onExpiry: @escaping @Sendable (String) -> Void) {
        self.limit = WaitLimit(seconds: seconds)
        self.rank = rank; self.host = host; self.onExpiry = onExpiry
    }

    func enter(_ call: String) {
        current.withLock { $0 = call }
        enteredAt.store(WaitLimit.now(), ordering: .releasing)
    }

    func leave() { enteredAt.store(0, ordering: .releasing) }

    func start() {
        running.store(true, ordering: .relaxed)
        Thread.detachNewThread { [self] in
            while running.load(ordering: .relaxed) {
                usleep(250_000)
                let since = enteredAt.load(ordering: .acquiring)
                if limit.expired(enteredAt: since, now: WaitLimit.now()) {
                    let call = current.withLock { $0 }
                    onExpiry("mocod: rank \(rank) on \(host) waited more than \(limit.seconds) s in \(call) for the other ranks "
                        + "(one is hung or its host is unreachable); giving up so the job can restart")
                    running.store(false, ordering: .relaxed)
                }
            }
        }
    }

    func stop() { running.store(false, ordering: .relaxed) }
}

/// How long a collective may wait, as a pure value (monotonic nanoseconds passed in).
public struct WaitLimit: Sendable, Equatable {
    public let seconds: Double
    public init(seconds: Double) { self.seconds = seconds }

    /// Whether a collective entered at `enteredAt` (0: none is running) has waited too long at `now`.
    public func expired(enteredAt: Int64, now: Int64) -> Bool {
        enteredAt != 0 && Double(now - enteredAt) > seconds * 1e9
    }

    /// The monotonic clock in nanoseconds (never 0).
    public static func now() -> Int64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return max(1, Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec))
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
