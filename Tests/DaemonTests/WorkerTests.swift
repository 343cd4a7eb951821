import Daemon
import Foundation
import Jobs
import MoCo
import NN
import Testing
import Worker

/// Jobs in worker processes: the same results concurrently as alone, crash isolation, restarts.
@Suite(.serialized) struct WorkerTests {
    static let spec = """
    {"name": "worker", "data": {"format": "npy", "path": "imgs.npy"},
     "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8},
     "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},
     "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 16, "epochs": EPOCHS},
     "checkpoint": {"every_steps": 2, "keep_last": 100}, "threads": 1, "seed": 7, "max_restarts": RESTARTS}
    """

    static func spec(epochs: Int = 2, restarts: Int = 2) -> String {
        spec.replacingOccurrences(of: "EPOCHS", with: String(epochs)).replacingOccurrences(of: "RESTARTS", with: String(restarts))
    }

    func losses(_ d: LiveDaemon, _ id: String) -> [Double] {
        let points = d.request("GET", "/v1/jobs/\(id)/metrics?max_points=100000").json["points"] as? [[String: Any]] ?? []
        return points.filter { $0["kind"] as? String == "step" }.compactMap { $0["loss"] as? Double }
    }

    /// The newest checkpoint's tensors, by name.
    func lastCheckpoint(_ d: LiveDaemon, _ id: String) throws -> [(String, SafeTensor)] {
        let store = CheckpointStore(directory: d.dir.appendingPathComponent("jobs/\(id)/checkpoints"), keepLast: 100, keepBest: 0)
        let last = try #require(store.list().last, "no checkpoint for \(id)")
        return try SafeTensorsFile.read(from: last.url).tensors.map { ($0.name, $0.tensor) }
    }

    /// Two identical jobs at once (`--max-running 2`, one pinned thread each) give every loss and
    /// every checkpoint tensor of the same job run alone, bit for bit. (In one process they shared
    /// oneDNN's primitives and stream, and 61–64 of 64 losses differed.)
    @Test func concurrentJobsMatchASoloRunBitForBit() throws {
        let solo = try LiveDaemon(maxRunning: 1, threads: 1)
        defer { solo.stop() }
        let s = try #require(solo.request("POST", "/v1/jobs", body: Self.spec()).json["id"] as? String)
        #expect(solo.waitFor(s, ["succeeded", "failed"])["state"] as? String == "succeeded")

        let pair = try LiveDaemon(maxRunning: 2, threads: 2)
        defer { pair.stop() }
        let a = try #require(pair.request("POST", "/v1/jobs", body: Self.spec()).json["id"] as? String)
        let b = try #require(pair.request("POST", "/v1/jobs", body: Self.spec()).json["id"] as? String)
        // Both run at the same time.
        let deadline = Date().addingTimeInterval(30)
        var both = false
        while Date() < deadline && !both {
            let states = [a, b].map { pair.request("GET", "/v1/jobs/\($0)").json["state"] as? String ?? "" }
            both = states.allSatisfy { $0 == "running" }
            if states.contains(where: { $0 == "succeeded" || $0 == "failed" }) { break }
            usleep(10_000)
        }
        #expect(both, "the two jobs never ran at the same time")
        for id in [a, b] { #expect(pair.waitFor(id, ["succeeded", "failed"])["state"] as? String == "succeeded") }

        let reference = losses(solo, s)
        #expect(reference.count == 8)
        for id in [a, b] {
            #expect(losses(pair, id) == reference, "losses of \(id) differ from the solo run")
            let mine = try lastCheckpoint(pair, id), theirs = try lastCheckpoint(solo, s)
            #expect(mine.map(\.0) == theirs.map(\.0))
            for (x, y) in zip(mine, theirs) { #expect(x.1 == y.1, "\(x.0) of \(id) differs from the solo run") }
        }
    }

    /// kill -9 of a worker mid-training: the job restarts from its checkpoint and succeeds, every
    /// step once; the API answers throughout.
    @Test func killedWorkerRestartsFromItsCheckpoint() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let id = try #require(d.request("POST", "/v1/jobs", body: Self.spec(epochs: 8)).json["id"] as? String)
        let jobDir = d.dir.appendingPathComponent("jobs/\(id)").path
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, (d.request("GET", "/v1/jobs/\(id)").json["progress"] as? [String: Any])?["step"] as? Int ?? 0 < 4 { usleep(10_000) }
        let pids = CrashTests.workerProcesses(jobDirectory: jobDir)
        try #require(pids.count == 1, "workers: \(pids)")
        // /healthz every 20 ms while the worker dies and comes back.
        let latencies = LatencyProbe(daemon: d)
        latencies.start()
        kill(pids[0], SIGKILL)
        let job = d.waitFor(id, ["succeeded", "failed"])
        latencies.stop()
        #expect(job["state"] as? String == "succeeded", "\(job)")
        #expect(job["restarts"] as? Int == 1, "\(job)")
        let steps = (d.request("GET", "/v1/jobs/\(id)/metrics?max_points=100000").json["points"] as? [[String: Any]] ?? [])
            .filter { $0["kind"] as? String == "step" }.compactMap { $0["step"] as? Int }
        #expect(steps == Array(1...32), "every step once")
        let log = String(decoding: d.request("GET", "/v1/jobs/\(id)/logs").body, as: UTF8.self)
        #expect(log.contains("worker exited abnormally: killed by signal 9") && log.contains("restart 1 of 2"), "\(log)")
        let (count, failures, p99) = latencies.summary
        #expect(count > 10 && failures == 0, "healthz: \(failures) of \(count) failed")
        print("healthz during a worker's kill -9 and restart: \(count) requests, p99 \(String(format: "%.1f", p99 * 1000)) ms")
    }

    /// A worker that keeps dying: after `max_restarts` restarts the job fails with the reason;
    /// the daemon carries on.
    @Test func workerThatKeepsDyingFailsTheJob() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let id = try #require(d.request("POST", "/v1/jobs", body: Self.spec(epochs: 50, restarts: 1)).json["id"] as? String)
        let jobDir = d.dir.appendingPathComponent("jobs/\(id)").path
        var kills = 0
        let deadline = Date().addingTimeInterval(60)
        var seen: Set<Int32> = []
        while Date() < deadline && kills < 2 {
            for pid in CrashTests.workerProcesses(jobDirectory: jobDir) where !seen.contains(pid) {
                seen.insert(pid)
                usleep(200_000)
                kill(pid, SIGKILL)
                kills += 1
            }
            usleep(10_000)
        }
        #expect(kills == 2)
        let job = d.waitFor(id, ["succeeded", "failed"])
        #expect(job["state"] as? String == "failed")
        let reason = job["failure_reason"] as? String ?? ""
        #expect(reason.contains("killed by signal 9") && reason.contains("after 1 restart"), "\(reason)")
        #expect(d.request("GET", "/healthz").status == 200)
        // The daemon still runs jobs.
        let next = try #require(d.request("POST", "/v1/jobs", body: Self.spec(epochs: 1)).json["id"] as? String)
        #expect(d.waitFor(next, ["succeeded", "failed"])["state"] as? String == "succeeded")
    }
}

extension WorkerTests {
    /// A job's threads are never cut: with two jobs at a time on two cores, a 2-thread job takes
    /// both (pinned), and a 1-thread job waits in the queue until they are free.
    @Test func threadsAreNeverCutAJobWaitsForItsCores() throws {
        let d = try LiveDaemon(maxRunning: 2, threads: 2)
        defer { d.stop() }
        let wide = Self.spec(epochs: 50).replacingOccurrences(of: #""threads": 1"#, with: #""threads": 2"#)
        let a = try #require(d.request("POST", "/v1/jobs", body: wide).json["id"] as? String)
        let jobDir = d.dir.appendingPathComponent("jobs/\(a)").path
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && CrashTests.workerProcesses(jobDirectory: jobDir).isEmpty { usleep(10_000) }
        let pid = try #require(CrashTests.workerProcesses(jobDirectory: jobDir).first)
        let args = (FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()).split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        #expect(args.firstIndex(of: "--cores").map { args[$0 + 1] } == "0,1", "\(args)")
        let b = try #require(d.request("POST", "/v1/jobs", body: Self.spec(epochs: 1)).json["id"] as? String)
        usleep(500_000)
        #expect(d.request("GET", "/v1/jobs/\(b)").json["state"] as? String == "queued")
        #expect(d.request("GET", "/v1/jobs/\(a)").json["state"] as? String == "running")
        #expect(d.request("POST", "/v1/jobs/\(a)/cancel").status == 202)
        #expect(d.waitFor(b, ["succeeded", "failed"])["state"] as? String == "succeeded")
    }


    /// `max_restarts` bounds a job's whole life: restarts used before a daemon restart count after it.
    @Test func restartsAreCountedAcrossDaemonRestarts() throws {
        let first = try LiveDaemon()
        let id = try #require(first.request("POST", "/v1/jobs", body: Self.spec(epochs: 50, restarts: 1)).json["id"] as? String)
        let jobDir = first.dir.appendingPathComponent("jobs/\(id)").path
        func killOneWorker(_ d: LiveDaemon, sparing: Set<Int32>) -> Int32? {
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                // Once it has taken a step (so a stop has a checkpoint to resume from).
                if let pid = CrashTests.workerProcesses(jobDirectory: jobDir).first(where: { !sparing.contains($0) }) {
                    usleep(300_000)
                    kill(pid, SIGKILL)
                    return pid
                }
                usleep(10_000)
            }
            return nil
        }
        let killed = try #require(killOneWorker(first, sparing: []))
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, first.request("GET", "/v1/jobs/\(id)").json["restarts"] as? Int != 1 { usleep(10_000) }
        #expect(first.request("GET", "/v1/jobs/\(id)").json["restarts"] as? Int == 1)
        first.stop(keepFiles: true)   // the job checkpoints and goes back to the queue
        let second = try LiveDaemon(reusing: first.dir)
        defer { second.stop() }
        #expect(second.request("GET", "/v1/jobs/\(id)").json["restarts"] as? Int == 1)
        _ = try #require(killOneWorker(second, sparing: [killed]))
        let job = second.waitFor(id, ["succeeded", "failed"])
        #expect(job["state"] as? String == "failed", "\(job)")
        #expect((job["failure_reason"] as? String ?? "").contains("after 1 restart"), "\(job)")
    }
}

/// `GET /healthz` in a loop on its own thread, with latencies.
final class LatencyProbe: @unchecked Sendable {
    /// Safe to share: the fields are guarded by `lock`.
    let daemon: LiveDaemon
    private let lock = NSLock()
    private var running = false
    private var seconds: [Double] = []
    private var failed = 0
    private let done = DispatchSemaphore(value: 0)

    init(daemon: LiveDaemon) { self.daemon = daemon }

    func start() {
        lock.lock(); running = true; lock.unlock()
        Thread.detachNewThread { [self] in
            while isRunning {
                let t0 = Date()
                let ok = daemon.request("GET", "/healthz").status == 200
                let dt = Date().timeIntervalSince(t0)
                lock.lock(); if ok { seconds.append(dt) } else { failed += 1 }; lock.unlock()
                usleep(20_000)
            }
            done.signal()
        }
    }

    var isRunning: Bool { lock.lock(); defer { lock.unlock() }; return running }

    func stop() { lock.lock(); running = false; lock.unlock(); done.wait() }

    /// Requests, failures, and the 99th percentile latency in seconds.
    var summary: (Int, Int, Double) {
        lock.lock(); defer { lock.unlock() }
        let sorted = seconds.sorted()
        let p99 = sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))]
        return (sorted.count + failed, failed, p99)
    }
}
