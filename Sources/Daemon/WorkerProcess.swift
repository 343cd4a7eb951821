import Foundation
import Jobs
import Logging
import Worker
#if canImport(Glibc)
import Glibc
#endif

/// Starts one job's worker process and reads its events until it exits. No scheduling here:
/// the caller decides what an exit means.
struct WorkerLaunch {
    let command: [String]
    let dataRoots: [String]
    /// How distributed jobs' ranks are started (nil: the daemon runs none).
    var mpi: MPISettings? = nil

    /// How a worker process ended: its last event if it ended normally, else why not.
    struct Exit {
        var last: WorkerEvent?
        var description: String
    }

    /// The command line of the job in `directory`: its worker pinned to `cores` (if any), or,
    /// on `hosts`, mpiexec running a worker per slot (their parent is mpiexec, not the daemon,
    /// which ties mpiexec to its own life instead).
    func commandLine(directory: URL, cores: [Int]?, hosts: [HostSlots]?) -> [String] {
        var args = command + ["--job-dir", directory.path]
        for r in dataRoots { args += ["--data-root", r] }
        guard let hosts, let mpi else {
            args += ["--parent", String(getpid())]
            if let cores { args += ["--cores", cores.map(String.init).joined(separator: ",")] }
            return args
        }
        return mpi.command(placement: hosts, worker: args, parent: getpid(), asRoot: getuid() == 0)
    }

    /// Runs the worker for the job in `directory` (pinned to `cores`, if any; a distributed
    /// job's ranks on `hosts`): `started` gets its command channel once it runs, `onEvent` each
    /// event it reports, in order. Returns when it has exited.
    func run(directory: URL, cores: [Int]?, hosts: [HostSlots]? = nil, log: Logger, started: (WorkerHandle) -> Void,
             onEvent: (WorkerEvent) -> Void) -> Exit {
        let p = Process()
        let line = commandLine(directory: directory, cores: cores, hosts: hosts)
        p.executableURL = URL(fileURLWithPath: line[0])
        p.arguments = Array(line.dropFirst())
        if let hosts {
            let ranks = hosts.reduce(0) { $0 + $1.slots }
            appendLog("starting \(ranks) ranks with mpiexec on \(HostSlots.hostList(hosts))", directory)
        }
        let input = Pipe(), output = Pipe()
        p.standardInput = input
        p.standardOutput = output
        let logURL = directory.appendingPathComponent("worker.log")
        if !FileManager.default.fileExists(atPath: logURL.path) { _ = FileManager.default.createFile(atPath: logURL.path, contents: nil) }
        let stderr = FileHandle(forWritingAtPath: logURL.path)
        _ = try? stderr?.seekToEnd()
        p.standardError = stderr ?? FileHandle.nullDevice
        do { try p.run() } catch {
            return Exit(last: WorkerEvent(kind: .failed, message: "cannot start the worker (\(command[0])): \(error)"), description: "")
        }
        try? stderr?.close()
        let handle = WorkerHandle(process: p, input: input.fileHandleForWriting)
        started(handle)
        var last: WorkerEvent?
        var lines = LineSplitter()
        let fd = output.fileHandleForReading.fileDescriptor
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            for line in lines.feed(buffer[0..<n]) {
                if let e = try? WorkerEvent.decode(line) {
                    onEvent(e)
                    if [.finished, .stopped, .failed].contains(e.kind) { last = e }
                } else {
                    log.warning("unreadable worker event", metadata: ["line": "\(String(decoding: line.prefix(200), as: UTF8.self))"])
                }
            }
        }
        p.waitUntilExit()
        handle.close()
        let status = p.terminationStatus
        let clean = p.terminationReason == .exit && status == 0
        if hosts != nil {
            // A rank that failed alone reports it and aborts the others (mpiexec then exits
            // non-zero): its `failed` stands. Rank 0 may also have stopped cleanly (mpiexec's
            // SIGTERM) because another rank died: that is that rank's abnormal end, not a stop.
            if clean || last?.kind == .failed || last?.kind == .finished, let last { return Exit(last: last, description: "") }
            if p.terminationReason == .uncaughtSignal {
                return Exit(last: nil, description: "mpiexec was killed by signal \(status): the job's ranks were taken down")
            }
            let why = status == 70
                ? "a rank waited longer than distributed.timeout_s in a collective (another rank hung or its host went quiet, or rank 0's evaluation or checkpoint outlasted the limit)"
                : "a rank ended before the run did"
            return Exit(last: nil, description: "mpiexec exited with status \(status): \(why) (worker.log has mpiexec's account)")
        }
        if p.terminationReason == .uncaughtSignal {
            let name = String(cString: strsignal(status))
            let hint = status == SIGKILL ? " (out of memory?)" : ""
            return Exit(last: nil, description: "killed by signal \(status) (\(name))\(hint)")
        }
        if status != 0 || last == nil { return Exit(last: nil, description: "exited with status \(status) without finishing its run") }
        return Exit(last: last, description: "")
    }

    private func appendLog(_ line: String, _ directory: URL) { JobLog.append(line, to: directory) }
}

/// Splits a byte stream into newline-terminated lines (the worker protocol's framing).
struct LineSplitter {
    private var partial: [UInt8] = []
    mutating func feed(_ bytes: ArraySlice<UInt8>) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var start = bytes.startIndex
        for i in bytes.indices where bytes[i] == 0x0a {
            out.append(partial + bytes[start..<i])
            partial.removeAll(keepingCapacity: true)
            start = i + 1
        }
        partial += bytes[start...]
        return out
    }
}

/// The daemon's end of one worker process: its process and its command channel.
final class WorkerHandle: @unchecked Sendable {
    /// Safe to share: writes to `input` are serialized by `lock`; `process` is only read.
    let process: Process
    private let input: FileHandle
    private let lock = NSLock()
    private var closed = false

    init(process: Process, input: FileHandle) { self.process = process; self.input = input }

    /// Sends a command (a JSON line); a worker that is gone is ignored.
    func send(_ command: WorkerCommand) {
        guard var line = try? JSONEncoder().encode(command) else { return }
        line.append(0x0a)
        lock.lock(); defer { lock.unlock() }
        guard !closed else { return }
        let fd = input.fileDescriptor
        _ = line.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    func close() {
        lock.lock(); defer { lock.unlock() }
        guard !closed else { return }
        closed = true
        try? input.close()
    }
}

/// A normal-priority thread whose only work is to create other threads: threads inherit the
/// scheduling class and nice value of their creator, and HTTP handlers run at a lower priority.
final class Launcher: @unchecked Sendable {
    /// Safe to share: `pending` is guarded by `cond`.
    private let cond = NSCondition()
    private var pending: [(String, @Sendable () -> Void)] = []

    init() {
        let t = Thread { [self] in loop() }
        t.name = "mocod-launcher"
        t.start()
    }

    private func loop() {
        while true {
            cond.lock()
            while pending.isEmpty { cond.wait() }
            let (name, body) = pending.removeFirst()
            cond.unlock()
            let t = Thread { body() }
            t.name = name
            t.stackSize = 8 << 20
            t.start()
        }
    }

    /// Starts `body` on a new thread created by the launcher; returns at once.
    func start(name: String, _ body: @escaping @Sendable () -> Void) {
        cond.lock()
        pending.append((name, body))
        cond.signal()
        cond.unlock()
    }
}
