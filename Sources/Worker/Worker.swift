import Collectives
import CProcess
import Data
import Foundation
import Kernels
import MoCo
import NN
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One job's process: trains the job in `jobDirectory` (its `spec.json`, checkpoints and
/// `metrics.jsonl`, as `moco train` writes them), reports `WorkerEvent`s as JSON lines on its
/// standard output and takes `WorkerCommand`s on its standard input.
///
/// Lifetimes: the worker is in its own process group; it stops (checkpointing at the next step)
/// on a command, on SIGTERM, on end of input, and when its parent dies (the kernel's
/// parent-death signal), so no worker outlives its daemon for more than a step. A lock on the
/// job directory keeps a second worker off the same job, across daemon restarts too.
public enum Worker {
    /// Why the run should stop: 0 not yet, else a `StopReason` raw value (set from any thread,
    /// including a signal handler).
    static let stopFlag = Atomic<Int>(0)

    enum StopReason: Int { case pause = 1, cancel, shutdown }

    public struct Options: Sendable {
        public var jobDirectory: URL
        public var dataRoots: [String]
        /// Cores to pin the process (and every thread it starts) to; nil: not pinned.
        public var cores: [Int]?
        /// The daemon's process id: the worker exits at once if it is no longer its parent.
        public var parent: Int32?
        public init(jobDirectory: URL, dataRoots: [String], cores: [Int]?, parent: Int32?) {
            self.jobDirectory = jobDirectory; self.dataRoots = dataRoots; self.cores = cores; self.parent = parent
        }
    }

    /// Runs the job to its end and returns the process's exit status: 0 when the run ended
    /// normally (finished, stopped or failed, as its last event says), 2 when it could not start.
    ///
    /// Under `mpiexec` (a job whose spec has `distributed.processes` above 1) every rank runs
    /// this. Rank 0 speaks the protocol: it reads the job's directory, takes the commands
    /// (`mpiexec` hands its standard input to rank 0 alone), writes the checkpoints and metrics
    /// and reports the events. It hands the spec and the checkpoint to resume from to the other
    /// ranks, which need not see the job's directory; each rank loads the dataset from its own
    /// host's data roots, and a rank that cannot fails the job with its host's name. The ranks'
    /// stop flag is agreed at every step (see `Trainer`), so a pause reaches all of them.
    public static func run(_ options: Options) -> Int32 {
        // The event channel is the original standard output; anything else printed goes to stderr.
        let events = dup(1)
        dup2(2, 1)
        signal(SIGPIPE, SIG_IGN)
        var world: Communicator?
        if Communicator.launchedByMPI() {
            do { world = try Communicator.world() } catch {
                EventChannel(fd: events).send(WorkerEvent(kind: .failed, message: "cannot join the job's ranks: \(error)"))
                return 2
            }
        }
        defer { if world != nil { Communicator.finalize() } }
        // No rank waits forever for another, from the first collective on (the spec's own
        // limit replaces this one once it is known).
        world?.limitWaiting(seconds: 300)
        let writer = (world?.rank ?? 0) == 0
        // Only rank 0 reports; the others' events (the same steps) are dropped.
        let channel = EventChannel(fd: writer ? events : -1)
        // Die with the daemon: SIGTERM when the parent goes (then checkpoint and stop), and
        // check it did not go before this was set. A rank's parent is mpiexec (or its host's
        // MPI daemon), which the daemon ties to its own life.
        _ = mocod_set_parent_death_signal(SIGTERM)
        if let parent = options.parent, getppid() != parent {
            channel.send(WorkerEvent(kind: .failed, message: "the daemon that started this worker is gone"))
            return 2
        }
        if world == nil { _ = setpgid(0, 0) }
        signal(SIGTERM) { _ in Worker.stopFlag.store(StopReason.shutdown.rawValue, ordering: .relaxed) }
        if world != nil { exitSoonAfterParentDies() }
        if let cores = options.cores, let problem = pin(to: cores) {
            channel.send(WorkerEvent(kind: .failed, message: problem))
            return 2
        }
        var lockFD: Int32 = -1
        if writer {
            // One worker per job, whatever happened to the daemon that started the last one.
            lockFD = open(options.jobDirectory.appendingPathComponent(".worker.lock").path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            guard lockFD >= 0, flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
                channel.send(WorkerEvent(kind: .failed, message: "another worker is training this job (its directory is locked)"))
                if let world { world.abort(3) }
                return 3
            }
            Thread.detachNewThread { readCommands() }
        }
        defer { if lockFD >= 0 { close(lockFD) } }

        let outcome: WorkerEvent
        do {
            let task = options.jobDirectory.appendingPathComponent(WorkerTask.fileName)
            if world == nil, let data = try? Data(contentsOf: task) {
                outcome = try evaluate(options, try JSONDecoder().decode(WorkerTask.self, from: data), channel: channel)
            } else {
                outcome = WorkerEvent(try train(options, world: world, channel: channel))
            }
        } catch let error as MPIError {
            // The ranks cannot talk (one died or hangs): an abnormal end, which the daemon restarts.
            FileHandle.standardError.write(Data("mocod worker rank \(world?.rank ?? 0): \(error)\n".utf8))
            if let world { world.abort(1) }
            return 1
        } catch let failure as Communicator.RankFailure {
            // Every rank knows (a rank could not start: its data, the spec, the checkpoint): the
            // job fails with the failing rank's host, and every rank ends normally.
            outcome = WorkerEvent(kind: .failed, message: "\(failure)")
        } catch {
            outcome = WorkerEvent(kind: .failed, message: "\(error)")
            if let world {
                // This rank failed during the run and the others may be waiting for it in a
                // collective: rank 0 reports and aborts them all (the job fails with its reason).
                // Another rank waits a moment first, so that rank 0, if it failed the same way,
                // reports it; alone, its abort is an abnormal end (restarted; worker.log has why).
                FileHandle.standardError.write(Data("mocod worker rank \(world.rank): \(error)\n".utf8))
                if writer { channel.send(outcome) } else { sleep(5) }
                world.abort(1)
            }
        }
        channel.send(outcome)
        return 0
    }

    /// Loads the job and trains it. On several ranks every step of the start is agreed (a rank
    /// that cannot take it fails the job on every rank, naming its host): rank 0 reads the spec
    /// and the checkpoint to resume from and hands them to the others; each rank loads the
    /// dataset from its own host, and all must find the same number of images.
    static func train(_ options: Options, world: Communicator?, channel: EventChannel) throws -> TrainingOutcome {
        let writer = (world?.rank ?? 0) == 0
        let specURL = options.jobDirectory.appendingPathComponent("spec.json")
        var specBytes = try agreed(world) { writer ? Array(try Data(contentsOf: specURL)) : nil }
        if let world { specBytes = try world.broadcastBytes(specBytes) }
        let spec = try agreed(world) { () throws -> JobSpec in
            let spec = try JobSpec.parse(Data(specBytes ?? []))
            if let world, spec.distributed.processes != world.size {
                throw SpecError([FieldIssue("distributed.processes", "is \(spec.distributed.processes) but \(world.size) ranks run this job")])
            }
            return spec
        }
        // From here the spec's limit on waiting for the other ranks holds.
        world?.limitWaiting(seconds: Double(spec.distributed.timeout_s))
        let (train, eval) = try agreed(world) {
            (try DataSources.load(spec.data, roots: options.dataRoots, size: spec.augment.size, allowAbsolute: false,
                                  channels: spec.model.in_channels, indexCache: options.jobDirectory.appendingPathComponent("data-index.json")),
             try spec.eval.map { try DataSources.load($0.source, roots: options.dataRoots, size: spec.augment.size, allowAbsolute: false,
                                                      channels: spec.model.in_channels,
                                                      indexCache: options.jobDirectory.appendingPathComponent("eval-index.json")) })
        }
        if let world {
            // Ranks on hosts with different copies of the data would step through different epochs.
            var counts = [Int64(train.count), Int64(eval?.count ?? -1)]
            try world.broadcast(&counts)
            try agreed(world) {
                guard counts == [Int64(train.count), Int64(eval?.count ?? -1)] else {
                    throw DataError(file: spec.data.path, "has \(train.count) images (evaluation: \(eval?.count ?? 0)) here but \(counts[0]) (\(max(counts[1], 0))) on rank 0's host")
                }
            }
        }
        let trainer = Trainer(spec: spec, train: train, eval: eval, outDirectory: options.jobDirectory, workers: 1, group: world) { e in
            channel.send(WorkerEvent(e))
        }
        // Resume from the newest checkpoint whose digest matches (a corrupt one is skipped).
        var resume = try agreed(world) { () throws -> Trainer.ResumePoint? in
            guard writer else { return nil }
            trainer.store.removeLeftovers()
            guard let url = trainer.store.latestValid()?.url else { return nil }
            return Trainer.ResumePoint(name: url.lastPathComponent, file: try SafeTensorsFile.read(from: url))
        }
        if let world {
            let name = try world.broadcastBytes(resume.map { Array($0.name.utf8) })
            let bytes = try world.broadcastBytes(resume.map { Array($0.file.encoded()) })
            resume = try agreed(world) {
                guard !writer && !bytes.isEmpty else { return resume }
                return Trainer.ResumePoint(name: String(decoding: name, as: UTF8.self), file: try SafeTensorsFile.decode(Data(bytes)))
            }
        }
        return try trainer.run(resuming: resume) { stopFlag.load(ordering: .relaxed) != 0 || channel.broken }
    }

    /// `body`'s result. On several ranks every rank calls this at the same point and learns
    /// whether `body` worked on all of them: if not, each throws the lowest failing rank's error
    /// (a `Communicator.RankFailure`, naming its host). Alone, `body`'s own error.
    static func agreed<T>(_ world: Communicator?, _ body: () throws -> T) throws -> T {
        guard let world else { return try body() }
        var value: T?
        var problem: String?
        do { value = try body() } catch { problem = "\(error)" }
        if let failure = try world.firstFailure(problem) { throw failure }
        return value!
    }

    /// A rank whose parent (mpiexec, or its host's MPI daemon) is gone stops at its next step;
    /// if the other ranks are gone too it could wait in a collective, so it exits 30 s later
    /// whatever it is doing (its last checkpoint stays; a half-written one is never named).
    static func exitSoonAfterParentDies() {
        let parent = getppid()
        Thread.detachNewThread {
            while getppid() == parent { usleep(500_000) }
            stopFlag.store(StopReason.shutdown.rawValue, ordering: .relaxed)
            sleep(30)
            _exit(75)
        }
    }

    /// Commands from the daemon, a JSON line each; end of input means the daemon is gone.
    static func readCommands() {
        var line: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { stopFlag.store(StopReason.shutdown.rawValue, ordering: .relaxed); return }
            for b in buffer[0..<n] {
                if b != 0x0a { line.append(b); continue }
                if let c = try? JSONDecoder().decode(WorkerCommand.self, from: Data(line)) {
                    let reason: StopReason = switch c.kind { case .pause: .pause; case .cancel: .cancel; case .shutdown: .shutdown }
                    stopFlag.store(reason.rawValue, ordering: .relaxed)
                }
                line.removeAll()
            }
        }
    }

    /// Pins this process to `cores` (threads started later inherit it); an error text on failure.
    static func pin(to cores: [Int]) -> String? {
        let err = cores.map { Int32($0) }.withUnsafeBufferPointer { mocod_pin_to_cores($0.baseAddress, Int32($0.count)) }
        return err == 0 ? nil : "cannot pin the worker to cores \(cores): \(String(cString: strerror(err)))"
    }
}

/// The worker's event channel: JSON lines written whole to one descriptor (-1: events are
/// dropped, as on the ranks other than 0). `broken` once the daemon stopped reading (the run
/// then stops: nobody would record it).
final class EventChannel: @unchecked Sendable {
    /// Safe to share: writes are serialized by `lock`.
    let fd: Int32
    private let lock = NSLock()
    private let failed = Atomic<Bool>(false)
    init(fd: Int32) { self.fd = fd }

    var broken: Bool { failed.load(ordering: .relaxed) }

    func send(_ event: WorkerEvent) {
        guard fd >= 0 else { return }
        var bytes = event.encoded()
        bytes.append(0x0a)
        lock.lock(); defer { lock.unlock() }
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { failed.store(true, ordering: .relaxed); return }
            done += n
        }
    }
}

extension Worker {
    /// Becomes `command` (execv), tied to the daemon's life: it gets SIGTERM when the daemon
    /// (`parent`) dies, even by kill -9, and runs in a process group of its own (a Ctrl-C at the
    /// daemon's terminal is the daemon's to handle). The daemon starts mpiexec this way; Open
    /// MPI's mpiexec takes its ranks down on SIGTERM. Returns only if it could not run `command`.
    public static func tie(parent: Int32, command: [String]) -> Int32 {
        guard let path = command.first else { return 2 }
        _ = mocod_set_parent_death_signal(SIGTERM)
        // The daemon may have died before the tie was set.
        guard getppid() == parent else {
            FileHandle.standardError.write(Data("mocod tied: the daemon \(parent) is gone; not starting \(path)\n".utf8))
            return 2
        }
        _ = setpgid(0, 0)
        var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) }
        argv.append(nil)
        execv(path, &argv)
        FileHandle.standardError.write(Data("mocod tied: cannot run \(path): \(String(cString: strerror(errno)))\n".utf8))
        return 127
    }
}
