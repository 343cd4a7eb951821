import CProcess
import Data
import Foundation
import Kernels
import MoCo
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
    public static func run(_ options: Options) -> Int32 {
        // The event channel is the original standard output; anything else printed goes to stderr.
        let events = dup(1)
        dup2(2, 1)
        signal(SIGPIPE, SIG_IGN)
        let channel = EventChannel(fd: events)
        // Die with the daemon: SIGTERM when the parent goes (then checkpoint and stop), and
        // check it did not go before this was set.
        _ = mocod_set_parent_death_signal(SIGTERM)
        if let parent = options.parent, getppid() != parent {
            channel.send(WorkerEvent(kind: .failed, message: "the daemon that started this worker is gone"))
            return 2
        }
        _ = setpgid(0, 0)
        signal(SIGTERM) { _ in Worker.stopFlag.store(StopReason.shutdown.rawValue, ordering: .relaxed) }
        if let cores = options.cores, let problem = pin(to: cores) {
            channel.send(WorkerEvent(kind: .failed, message: problem))
            return 2
        }
        // One worker per job, whatever happened to the daemon that started the last one.
        let lockFD = open(options.jobDirectory.appendingPathComponent(".worker.lock").path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lockFD >= 0, flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            channel.send(WorkerEvent(kind: .failed, message: "another worker is training this job (its directory is locked)"))
            return 3
        }
        defer { close(lockFD) }
        Thread.detachNewThread { readCommands() }

        let outcome: WorkerEvent
        do {
            let spec = try JobSpec.parse(Data(contentsOf: options.jobDirectory.appendingPathComponent("spec.json")))
            let train = try DataSources.load(spec.data, roots: options.dataRoots, size: spec.augment.size, allowAbsolute: false)
            let eval = try spec.eval.map { try DataSources.load($0.source, roots: options.dataRoots, size: spec.augment.size, allowAbsolute: false) }
            let trainer = Trainer(spec: spec, train: train, eval: eval, outDirectory: options.jobDirectory, workers: 1) { e in
                channel.send(WorkerEvent(e))
            }
            trainer.store.removeLeftovers()
            // Resume from the newest checkpoint whose digest matches (a corrupt one is skipped).
            let resume = trainer.store.latestValid()?.url
            outcome = WorkerEvent(try trainer.run(resume: resume) { stopFlag.load(ordering: .relaxed) != 0 || channel.broken })
        } catch {
            outcome = WorkerEvent(kind: .failed, message: "\(error)")
        }
        channel.send(outcome)
        return 0
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

/// The worker's event channel: JSON lines written whole to one descriptor. `broken` once the
/// daemon stopped reading (the run then stops: nobody would record it).
final class EventChannel: @unchecked Sendable {
    /// Safe to share: writes are serialized by `lock`.
    let fd: Int32
    private let lock = NSLock()
    private let failed = Atomic<Bool>(false)
    init(fd: Int32) { self.fd = fd }

    var broken: Bool { failed.load(ordering: .relaxed) }

    func send(_ event: WorkerEvent) {
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
