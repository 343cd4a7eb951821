import Foundation
import Testing

/// kill -9 the daemon after a checkpoint, start it again: the job resumes from that checkpoint
/// and succeeds; nothing is lost.
@Suite(.serialized) struct CrashTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let exe = root.appendingPathComponent(".build/debug/mocod")

    func start(_ dir: URL, port: Int) throws -> Process {
        let p = Process()
        p.executableURL = Self.exe
        p.arguments = ["--port", String(port), "--data-dir", dir.path, "--data-root", dir.appendingPathComponent("datasets").path,
                       "--threads", "1", "--log-level", "warning"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        return p
    }

    func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var out = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &out) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: out.sin_port))
    }

    func curl(_ args: [String]) -> Data {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["curl", "-s", "--max-time", "5"] + args
        let out = Pipe()
        p.standardOutput = out
        try? p.run()
        let d = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return d
    }

    /// Worker processes (`mocod worker --job-dir DIR`) alive now, by pid, from /proc.
    static func workerProcesses(jobDirectory: String) -> [Int32] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return pids.compactMap { Int32($0) }.filter { pid in
            guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let args = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard args.contains("worker"), let i = args.firstIndex(of: "--job-dir"), i + 1 < args.count else { return false }
            // A zombie (exited, not yet reaped) has an empty cmdline and is not counted.
            return args[i + 1] == jobDirectory
        }
    }

    /// Until /healthz answers (at most 20 s).
    func waitHealthy(_ base: String) {
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline && curl(["\(base)/healthz"]).isEmpty { usleep(20_000) }
    }

    func json(_ d: Data) -> [String: Any] { (try? JSONSerialization.jsonObject(with: d)) as? [String: Any] ?? [:] }

    /// With jobs pinned to cores of their own, mocod will not start with more threads than the
    /// cores it may run on (it would pin workers to cores that do not exist).
    @Test func refusesMoreThreadsThanItsCoresWhenPinning() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.exe.path), "build mocod first (swift build)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cores-\(UUID())")
        defer { try? FileManager.default.removeItem(at: dir) }
        let p = Process()
        p.executableURL = Self.exe
        p.arguments = ["--port", "0", "--data-dir", dir.path, "--max-running", "2", "--threads", "4097"]
        let err = Pipe()
        p.standardOutput = FileHandle.nullDevice
        p.standardError = err
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 64 && text.contains("--threads 4097 is more than the"), "\(p.terminationStatus): \(text)")
    }

    @Test func killedDaemonResumesFromCheckpoint() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.exe.path), "build mocod first (swift build)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("crash-\(UUID())")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("datasets"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try LiveDaemon.writeImages(to: dir.appendingPathComponent("datasets/imgs.npy"), count: 512)
        let port = freePort()
        var daemon = try start(dir, port: port)
        defer { if daemon.isRunning { daemon.terminate() } }
        let base = "http://127.0.0.1:\(port)"
        waitHealthy(base)
        let spec = """
        {"name": "crash", "data": {"format": "npy", "path": "imgs.npy"},
         "model": {"arch": "resnet18", "stem": "cifar", "width": 8, "in_channels": 1, "dim": 16},
         "moco": {"queue": 64, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},
         "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 32, "epochs": 4},
         "checkpoint": {"every_steps": 4, "keep_last": 100}, "threads": 1}
        """
        let created = json(curl(["-X", "POST", "-H", "Content-Type: application/json", "--data", spec, "\(base)/v1/jobs"]))
        let id = try #require(created["id"] as? String)
        // Wait for the first checkpoint, then kill -9.
        let ckdir = dir.appendingPathComponent("jobs/\(id)/checkpoints")
        var deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: ckdir.path)) ?? []
            if names.contains(where: { $0.hasSuffix(".sha256") }) { break }
            usleep(20_000)
        }
        let workers = Self.workerProcesses(jobDirectory: dir.appendingPathComponent("jobs/\(id)").path)
        #expect(workers.count == 1, "one worker trains the job: \(workers)")
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
        // The worker notices (parent-death signal), checkpoints at its next step and exits: no orphan.
        let killed = Date()
        while !Self.workerProcesses(jobDirectory: dir.appendingPathComponent("jobs/\(id)").path).isEmpty && Date().timeIntervalSince(killed) < 15 {
            usleep(50_000)
        }
        let gone = Date().timeIntervalSince(killed)
        #expect(Self.workerProcesses(jobDirectory: dir.appendingPathComponent("jobs/\(id)").path).isEmpty && gone < 10,
                "the worker outlived its daemon by \(gone) s")
        let onDisk = ((try? FileManager.default.contentsOfDirectory(atPath: ckdir.path)) ?? []).filter { $0.hasSuffix(".sha256") }
        try #require(!onDisk.isEmpty, "no checkpoint before the kill")
        let newestStep = onDisk.compactMap { Int($0.split(separator: "-s").last?.prefix(8) ?? "") }.max()!
        // Restart: the job resumes from its newest valid checkpoint and succeeds.
        daemon = try start(dir, port: port)
        waitHealthy(base)
        var state = ""
        deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            state = json(curl(["\(base)/v1/jobs/\(id)"]))["state"] as? String ?? ""
            if state == "succeeded" || state == "failed" { break }
            usleep(100_000)
        }
        #expect(state == "succeeded")
        let log = String(decoding: curl(["\(base)/v1/jobs/\(id)/logs"]), as: UTF8.self)
        #expect(log.contains("resumed from ckpt-"), "\(log)")
        let resumedAt = log.components(separatedBy: " at step ").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) } ?? -1
        // The worker checkpoints on its way out, so the resume is at or after the last periodic one.
        #expect(resumedAt >= newestStep, "resumed at \(resumedAt), newest checkpoint after the kill \(newestStep)")
        let metrics = json(curl(["\(base)/v1/jobs/\(id)/metrics?max_points=100000"]))
        let steps = (metrics["points"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == "step" }.compactMap { $0["step"] as? Int }
        #expect(steps == Array(1...64), "every step once, none lost")
        let list = json(curl(["\(base)/v1/jobs?state=succeeded"]))["jobs"] as? [Any]
        #expect(list?.count == 1)
        daemon.terminate()
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0)
    }
}
