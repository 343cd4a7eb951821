import Daemon
import Data
import Foundation
import MoCo
import NN
import Synchronization
import Testing

/// Distributed jobs through the daemon: `distributed.processes` 2 on a localhost hostfile with 2
/// slots, run by Open MPI's mpiexec (the ranks are `mocod worker` processes).
@Suite(.serialized) struct DistributedTests {
    static func spec(processes: Int, epochs: Int = 2, restarts: Int = 2, timeout: Int = 300, data: String = "imgs.npy") -> String {
        """
        {"name": "dist", "data": {"format": "npy", "path": "\(data)"},
         "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8},
         "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},
         "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 16, "epochs": \(epochs)},
         "checkpoint": {"every_steps": 2, "keep_last": 100}, "threads": 1, "seed": 7, "max_restarts": \(restarts),
         "distributed": {"processes": \(processes), "timeout_s": \(timeout)}}
        """
    }

    func steps(_ d: LiveDaemon, _ id: String) -> [[String: Any]] {
        (d.request("GET", "/v1/jobs/\(id)/metrics?max_points=100000").json["points"] as? [[String: Any]] ?? [])
            .filter { $0["kind"] as? String == "step" }
    }

    /// The ranks of a job (the `mocod worker` processes under mpiexec), by rank.
    static func ranks(jobDirectory: String) -> [Int: Int32] {
        var out: [Int: Int32] = [:]
        for pid in CrashTests.workerProcesses(jobDirectory: jobDirectory) {
            guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
                  raw.split(separator: 0).dropFirst().first.map({ String(decoding: $0, as: UTF8.self) }) == "worker",
                  let env = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { continue }
            for v in env.split(separator: 0).map({ String(decoding: $0, as: UTF8.self) }) where v.hasPrefix("OMPI_COMM_WORLD_RANK=") {
                out[Int(v.dropFirst("OMPI_COMM_WORLD_RANK=".count))!] = pid
            }
        }
        return out
    }

    /// Waits until the job has reached `step` (at most 60 s) and returns the step it is at.
    @discardableResult
    func waitForStep(_ d: LiveDaemon, _ id: String, _ step: Int) -> Int {
        let deadline = Date().addingTimeInterval(60)
        var now = 0
        while Date() < deadline {
            now = (d.request("GET", "/v1/jobs/\(id)").json["progress"] as? [String: Any])?["step"] as? Int ?? 0
            if now >= step { break }
            usleep(20_000)
        }
        return now
    }

    /// Whether `pid` is still a rank of a `mocod worker` (not a reused pid).
    static func isWorker(_ pid: Int32) -> Bool {
        guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return raw.split(separator: 0).dropFirst().first.map { String(decoding: $0, as: UTF8.self) } == "worker"
    }

    /// A job on 2 ranks (8 images each) looks like the same job in one process (16 images,
    /// bn_splits 2): the same states, steps and checkpoints, losses and every checkpoint tensor
    /// within 1e-4 relative, and the same live events.
    @Test func distributedJobMatchesALocalOne() throws {
        let d = try LiveDaemon(mpiSlots: 2)
        defer { d.stop() }
        let local = try #require(d.request("POST", "/v1/jobs", body: Self.spec(processes: 1)).json["id"] as? String)
        // Submitted while the local job holds the slot and held paused until its live stream
        // follows it (a job this small would otherwise be half done before the stream starts).
        let created = d.request("POST", "/v1/jobs", body: Self.spec(processes: 2))
        #expect(created.status == 201, "\(created.json)")
        let dist = try #require(created.json["id"] as? String)
        #expect(d.request("POST", "/v1/jobs/\(dist)/pause").status == 202)
        let stream = EventStream(d, dist)
        #expect(d.waitFor(local, ["succeeded", "failed"])["state"] as? String == "succeeded")
        #expect(d.request("POST", "/v1/jobs/\(dist)/resume").status == 202)
        let job = d.waitFor(dist, ["succeeded", "failed"])
        #expect(job["state"] as? String == "succeeded", "\(job)")
        #expect((job["spec"] as? [String: Any]).flatMap { $0["distributed"] as? [String: Any] }?["processes"] as? Int == 2)

        let a = steps(d, local), b = steps(d, dist)
        #expect(a.count == 8 && b.count == 8)
        #expect(a.map { $0["step"] as? Int } == b.map { $0["step"] as? Int })
        // A distributed step reports its all-reduce (gradients and batch-norm statistics); a local one has none.
        #expect(a.allSatisfy { $0["allreduce_bytes"] == nil })
        #expect(b.allSatisfy { ($0["allreduce_bytes"] as? Int ?? 0) > 0 && ($0["allreduce_seconds"] as? Double ?? -1) >= 0 }, "\(b.first ?? [:])")
        for (x, y) in zip(a, b) {
            let lx = x["loss"] as? Double ?? .nan, ly = y["loss"] as? Double ?? .nan
            #expect(abs(lx - ly) <= 1e-4 * abs(lx), "step \(x["step"] ?? -1): \(lx) alone, \(ly) on 2 ranks")
        }
        let ca = d.request("GET", "/v1/jobs/\(local)/checkpoints").json["checkpoints"] as? [[String: Any]] ?? []
        let cb = d.request("GET", "/v1/jobs/\(dist)/checkpoints").json["checkpoints"] as? [[String: Any]] ?? []
        #expect(ca.count == cb.count && !cb.isEmpty)
        #expect(ca.map { $0["step"] as? Int } == cb.map { $0["step"] as? Int })
        let mine = try WorkerTests().lastCheckpoint(d, dist), theirs = try WorkerTests().lastCheckpoint(d, local)
        #expect(mine.map(\.0) == theirs.map(\.0))
        for ((name, x), (_, y)) in zip(mine, theirs) {
            if x.dtype == .f32 {
                let u = try x.floats(), v = try y.floats()
                let scale = max(1e-3, v.map { abs($0) }.max() ?? 0)
                let worst = zip(u, v).map { abs($0 - $1) }.max() ?? 0
                #expect(worst <= 1e-4 * scale, "\(name): differs by \(worst) (scale \(scale))")
            } else {
                #expect(x == y, "\(name) differs")
            }
        }
        // The download is the same bytes the job wrote, as for a local job.
        let last = try #require(cb.last)
        let file = d.request("GET", "/v1/jobs/\(dist)/checkpoints/\(last["name"] as? String ?? "")")
        #expect(file.status == 200 && SHA256.hex(file.body) == last["sha256"] as? String)

        let events = stream.text
        #expect(events.contains("event: metric") && events.contains("event: checkpoint") && events.contains("\"state\":\"succeeded\""),
                "\(events.prefix(500))")
        let log = String(decoding: d.request("GET", "/v1/jobs/\(dist)/logs").body, as: UTF8.self)
        #expect(log.contains("starting 2 ranks with mpiexec on localhost:2"), "\(log)")
    }

    /// kill -9 of rank 1 mid-training: mpiexec takes rank 0 down, and the job restarts from its
    /// checkpoint under max_restarts and succeeds, every step once.
    @Test func killedRankRestartsTheJobFromItsCheckpoint() throws {
        let d = try LiveDaemon(mpiSlots: 2)
        defer { d.stop() }
        let id = try #require(d.request("POST", "/v1/jobs", body: Self.spec(processes: 2, epochs: 40)).json["id"] as? String)
        let at = waitForStep(d, id, 6)
        try #require(at >= 6 && at < 140, "step \(at): the kill must land mid-run")
        let ranks = Self.ranks(jobDirectory: d.dir.appendingPathComponent("jobs/\(id)").path)
        try #require(ranks.count == 2, "ranks: \(ranks)")
        let busy = d.request("GET", "/v1/info").json["mpi"] as? [String: Any]
        #expect(busy?["slots_total"] as? Int == 2 && busy?["slots_free"] as? Int == 0, "\(busy ?? [:])")
        kill(ranks[1]!, SIGKILL)
        let job = d.waitFor(id, ["succeeded", "failed"])
        #expect(job["state"] as? String == "succeeded", "\(job)")
        #expect(job["restarts"] as? Int == 1, "\(job)")
        #expect(steps(d, id).compactMap { $0["step"] as? Int } == Array(1...160), "every step once")
        let idle = d.request("GET", "/v1/info").json["mpi"] as? [String: Any]
        #expect(idle?["slots_free"] as? Int == 2, "the slots come back: \(idle ?? [:])")
        let log = String(decoding: d.request("GET", "/v1/jobs/\(id)/logs").body, as: UTF8.self)
        #expect(log.contains("worker exited abnormally: mpiexec exited with status") && log.contains("restart 1 of 2")
                && log.contains("resumed from ckpt-"), "\(log)")
    }

    /// A rank that hangs (SIGSTOP) does not hold the other forever: past `distributed.timeout_s`
    /// the waiting rank gives up, the job restarts from its checkpoint and succeeds.
    @Test func hungRankIsGivenUpOnAndTheJobRestarts() throws {
        let d = try LiveDaemon(mpiSlots: 2)
        defer { d.stop() }
        let id = try #require(d.request("POST", "/v1/jobs", body: Self.spec(processes: 2, epochs: 40, timeout: 5)).json["id"] as? String)
        let at = waitForStep(d, id, 6)
        try #require(at >= 6 && at < 140, "step \(at): the stop must land mid-run")
        let ranks = Self.ranks(jobDirectory: d.dir.appendingPathComponent("jobs/\(id)").path)
        try #require(ranks.count == 2, "ranks: \(ranks)")
        let stopped = Date()
        kill(ranks[1]!, SIGSTOP)
        defer { if Self.isWorker(ranks[1]!) { kill(ranks[1]!, SIGKILL) } }
        // The restart comes within the limit plus a few seconds.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, d.request("GET", "/v1/jobs/\(id)").json["restarts"] as? Int ?? 0 < 1 { usleep(50_000) }
        let waited = Date().timeIntervalSince(stopped)
        #expect(waited >= 4 && waited < 20, "restarted after \(waited) s")
        let job = d.waitFor(id, ["succeeded", "failed"])
        #expect(job["state"] as? String == "succeeded", "\(job)")
        #expect(job["restarts"] as? Int == 1)
        let log = String(decoding: d.request("GET", "/v1/jobs/\(id)/logs").body, as: UTF8.self)
        #expect(log.contains("mpiexec exited with status 70: a rank waited longer than distributed.timeout_s"), "\(log)")
        #expect(!Self.isWorker(ranks[1]!), "the stopped rank was taken down")
        let workerLog = (try? String(contentsOf: d.dir.appendingPathComponent("jobs/\(id)/worker.log"), encoding: .utf8)) ?? ""
        #expect(workerLog.contains("rank 0 on") && workerLog.contains("waited more than 5.0 s"), "\(workerLog.suffix(800))")
    }

    /// A rank that cannot load the dataset fails the job (no restart: it would fail again), and
    /// the reason names the host and the rank.
    @Test func missingDataFailsTheJobNamingTheHost() throws {
        let d = try LiveDaemon(mpiSlots: 2)
        defer { d.stop() }
        let root = d.dir.appendingPathComponent("datasets")
        try LiveDaemon.writeImages(to: root.appendingPathComponent("gone.npy"), count: 64)
        // A job holds the slot while the second waits; its data goes away before it starts.
        let first = try #require(d.request("POST", "/v1/jobs", body: Self.spec(processes: 2, epochs: 200)).json["id"] as? String)
        _ = d.waitFor(first, ["running"])
        let id = try #require(d.request("POST", "/v1/jobs", body: Self.spec(processes: 2, data: "gone.npy")).json["id"] as? String)
        try FileManager.default.removeItem(at: root.appendingPathComponent("gone.npy"))
        #expect(d.request("POST", "/v1/jobs/\(first)/cancel").status == 202)
        let job = d.waitFor(id, ["succeeded", "failed"])
        #expect(job["state"] as? String == "failed")
        #expect(job["restarts"] as? Int == 0)
        let reason = job["failure_reason"] as? String ?? ""
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, 255)
        let hostName = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        #expect(reason.contains("on host \(hostName) (rank 0)") && reason.contains("gone.npy"), "\(reason)")
    }

    /// A streamed folder on 2 ranks: each rank decodes its share of every batch, so the unusable
    /// images are found on both; every one is named once in the job's log (whichever rank found
    /// it) and counted in data_errors. (Normalization is given, so no rank decodes images for
    /// channel statistics, which would find every bad image of so small a folder on each.)
    @Test func badImagesOnEveryRankAreNamedOnce() throws {
        let d = try LiveDaemon(mpiSlots: 2)
        defer { d.stop() }
        let photos = d.dir.appendingPathComponent("datasets/photos")
        for c in ["a", "b"] { try FileManager.default.createDirectory(at: photos.appendingPathComponent(c), withIntermediateDirectories: true) }
        for i in 0..<34 {
            let px = (0..<(12 * 10 * 3)).map { UInt8(($0 * (i + 3) + i * 31) % 256) }
            let jpg = try Readers.encodeJPEG(px, width: 12, height: 10, channels: 3)
            try Data(jpg).write(to: photos.appendingPathComponent("\(i % 2 == 0 ? "a" : "b")/img\(String(format: "%02d", i)).jpg"))
        }
        // Each between two good ones (img02 < img03b < img04), so no substitution comes upon two.
        let bad = [3, 7, 11, 15, 19, 23].map { "a/img\(String(format: "%02d", $0))b.jpg" }
        for (k, name) in bad.enumerated() { try Data(k % 2 == 0 ? [] : Array("not a JPEG".utf8)).write(to: photos.appendingPathComponent(name)) }
        let spec = """
        {"name": "dist-stream", "data": {"format": "folder", "path": "photos", "cache_mb": 0, "max_error_rate": 0.5},
         "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 3, "dim": 8},
         "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},
         "augment": {"preset": "v2", "size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
         "optim": {"batch_size": 8, "epochs": 1}, "threads": 1, "seed": 3, "distributed": {"processes": 2}}
        """
        let created = d.request("POST", "/v1/jobs", body: spec)
        let id = try #require(created.json["id"] as? String, "\(created.json)")
        let job = d.waitFor(id, ["succeeded", "failed"])
        #expect(job["state"] as? String == "succeeded", "\(job)")
        let log = String(decoding: d.request("GET", "/v1/jobs/\(id)/logs").body, as: UTF8.self)
        for name in bad {
            let lines = log.split(separator: "\n").filter { $0.contains("skipped an unusable image: \(name)") }
            #expect(lines.count == 1, "\(name): \(lines.count) lines in\n\(log)")
        }
        #expect(steps(d, id).last?["data_errors"] as? Int == 6)
    }

    /// kill -9 of the daemon while a distributed job trains: mpiexec (tied to the daemon) takes
    /// every rank down; nothing of the job is left running.
    @Test func killedDaemonLeavesNoRankRunning() throws {
        let crash = CrashTests()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dist-crash-\(UUID())")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("datasets"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try LiveDaemon.writeImages(to: dir.appendingPathComponent("datasets/imgs.npy"), count: 64)
        try "localhost slots=2\n".write(to: dir.appendingPathComponent("hostfile"), atomically: true, encoding: .utf8)
        let port = crash.freePort()
        let daemon = Process()
        daemon.executableURL = CrashTests.exe
        daemon.arguments = ["--port", String(port), "--data-dir", dir.path, "--data-root", dir.appendingPathComponent("datasets").path,
                            "--threads", "1", "--log-level", "warning", "--mpi-hostfile", dir.appendingPathComponent("hostfile").path,
                            "--mpiexec-args=--mca btl_vader_single_copy_mechanism none"]
        daemon.standardOutput = FileHandle.nullDevice
        daemon.standardError = FileHandle.nullDevice
        try daemon.run()
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        let base = "http://127.0.0.1:\(port)"
        crash.waitHealthy(base)
        let created = crash.json(crash.curl(["-X", "POST", "-H", "Content-Type: application/json", "--data",
                                             Self.spec(processes: 2, epochs: 200), "\(base)/v1/jobs"]))
        let id = try #require(created["id"] as? String, "\(created)")
        let jobDir = dir.appendingPathComponent("jobs/\(id)").path
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline && Self.ranks(jobDirectory: jobDir).count < 2 { usleep(20_000) }
        try #require(Self.ranks(jobDirectory: jobDir).count == 2)
        sleep(1)
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
        let killed = Date()
        // Every process of the job: mpiexec and the ranks (all name the job's directory).
        while !CrashTests.workerProcesses(jobDirectory: jobDir).isEmpty && Date().timeIntervalSince(killed) < 30 { usleep(50_000) }
        let gone = Date().timeIntervalSince(killed)
        let left = CrashTests.workerProcesses(jobDirectory: jobDir)
        // Within 5 s: the tie to mpiexec, not the ranks' own 30 s fallback.
        #expect(left.isEmpty && gone < 5, "still running \(gone) s after the daemon's kill -9: \(left)")
        for pid in left { kill(pid, SIGKILL) }
        print("distributed job's processes gone \(String(format: "%.1f", gone)) s after the daemon's kill -9")
    }

    /// Pause checkpoints every rank's progress and frees the slots; resume continues from that
    /// checkpoint on fresh ranks; cancel ends it.
    @Test func pauseResumeAndCancelADistributedJob() throws {
        let d = try LiveDaemon(mpiSlots: 2)
        defer { d.stop() }
        let id = try #require(d.request("POST", "/v1/jobs", body: Self.spec(processes: 2, epochs: 200)).json["id"] as? String)
        waitForStep(d, id, 4)
        let stepAtPause = d.pauseCheckpointed(id)
        #expect(Self.ranks(jobDirectory: d.dir.appendingPathComponent("jobs/\(id)").path).isEmpty, "no rank runs while paused")
        #expect((d.request("GET", "/v1/info").json["mpi"] as? [String: Any])?["slots_free"] as? Int == 2)
        #expect(d.request("POST", "/v1/jobs/\(id)/resume").status == 202)
        waitForStep(d, id, stepAtPause + 2)
        let log = String(decoding: d.request("GET", "/v1/jobs/\(id)/logs").body, as: UTF8.self)
        #expect(log.contains("resumed from ckpt-") && log.contains("at step \(stepAtPause)"), "\(log)")
        #expect(d.request("POST", "/v1/jobs/\(id)/cancel").status == 202)
        #expect(d.waitFor(id, ["cancelled"])["state"] as? String == "cancelled")
        let points = steps(d, id).compactMap { $0["step"] as? Int }
        #expect(points == Array(1...(points.last ?? 0)), "every step once across the pause")
    }

    /// What the daemon refuses at submission: a distributed job without a hostfile, and one with
    /// more ranks than the hostfile has slots.
    @Test func distributedJobsNeedSlots() throws {
        let none = try LiveDaemon()
        defer { none.stop() }
        #expect(none.request("GET", "/v1/info").json["mpi"] is NSNull)
        let r = none.request("POST", "/v1/jobs", body: Self.spec(processes: 2))
        #expect(r.status == 422)
        let details = r.json["error"].flatMap { ($0 as? [String: Any])?["details"] as? [[String: Any]] } ?? []
        #expect(details.contains { $0["field"] as? String == "distributed.processes"
                && ($0["problem"] as? String ?? "").contains("start it with --mpi-hostfile") }, "\(r.json)")
        let two = try LiveDaemon(mpiSlots: 2)
        defer { two.stop() }
        let big = Self.spec(processes: 4).replacingOccurrences(of: "\"bn_splits\": 2", with: "\"bn_splits\": 4")
        let r2 = two.request("POST", "/v1/jobs", body: big)
        #expect(r2.status == 422)
        let d2 = r2.json["error"].flatMap { ($0 as? [String: Any])?["details"] as? [[String: Any]] } ?? []
        #expect(d2.contains { ($0["problem"] as? String ?? "").contains("must be at most 2, the MPI slots") }, "\(r2.json)")
    }
}
