import Daemon
import Data
import Foundation
import HTTP
import Jobs
import Kernels
import Logging
import NN
import Synchronization
import Testing

/// A daemon (scheduler + API + server) on port 0 with a temporary data directory and a tiny
/// NPY dataset under its own data root.
/// Safe to share across the test's threads: every stored property is immutable after init.
final class LiveDaemon: @unchecked Sendable {
    let dir: URL
    let server: HTTPServer
    let scheduler: Scheduler
    var port: Int { server.port }

    /// The running-job counts the scheduler reported, in order.
    private let reportedCounts: CountLog
    var runningCounts: [Int] { reportedCounts.values }

    /// Jobs run in worker processes of the built `mocod` (see `CrashTests.exe`).
    /// - Parameter reusing: the data directory of an earlier daemon (its store and jobs), or nil for a new one.
    /// - Parameter mpiSlots: distributed jobs run on this many slots of localhost (Open MPI's
    ///   mpiexec, without cross-memory attach, which containers often forbid).
    init(token: String? = nil, budget: CPUBudget? = nil, maxRunning: Int = 1, threads: Int = 1, reusing: URL? = nil,
         mpiSlots: Int? = nil) throws {
        dir = reusing ?? FileManager.default.temporaryDirectory.appendingPathComponent("daemon-\(UUID())")
        let root = dir.appendingPathComponent("datasets")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        try LiveDaemon.writeImages(to: root.appendingPathComponent("imgs.npy"), count: 64)
        var mpi: MPISettings?
        if let mpiSlots {
            let hostfile = dir.appendingPathComponent("hostfile")
            try "localhost slots=\(mpiSlots)\n".write(to: hostfile, atomically: true, encoding: .utf8)
            mpi = try MPISettings.load(hostfile: hostfile.path, mpiexec: "/usr/bin/mpiexec",
                                       extraArguments: ["--mca", "btl_vader_single_copy_mechanism", "none"])
            mpi?.tieCommand = [CrashTests.exe.path, "tied"]
        }
        let settings = DaemonSettings(dataDirectory: dir, dataRoots: [root.path], maxRunning: maxRunning, threads: threads,
                                      workerCommand: [CrashTests.exe.path, "worker"], mpi: mpi)
        var logger = Logger(label: "test")
        logger.logLevel = .error
        let counts = CountLog()
        scheduler = try Scheduler(store: try JobStore(path: settings.databasePath), settings: settings, logger: logger) { n in
            budget?.setLimited(n > 0)
            counts.append(n)
        }
        reportedCounts = counts
        let api = API(scheduler: scheduler, token: token, openAPI: OpenAPIDocument.text, budget: budget)
        var cfg = ServerConfiguration()
        cfg.cpuBudget = budget
        server = HTTPServer(configuration: cfg, logger: logger, handler: api.handler())
        api.attach(server)
        try server.start()
        try scheduler.recover()   // as mocod does: scheduling starts once the stored queue is read
    }

    /// `count` gray 8x8 images as a uint8 (N, H, W) NPY file.
    static func writeImages(to url: URL, count: Int) throws {
        let pixels: [UInt8] = (0..<(count * 64)).map { (i: Int) -> UInt8 in UInt8((i * 37 + (i / 64) * 11) % 256) }
        try Readers.writeNPY(pixels, shape: [count, 8, 8], to: url)
    }

    /// Stops as mocod does on SIGTERM; the data directory is removed unless `keepFiles`.
    func stop(keepFiles: Bool = false) {
        scheduler.shutdown(timeout: 10)
        scheduler.closeStreams()   // as mocod does
        server.shutdown()
        if !keepFiles { try? FileManager.default.removeItem(at: dir) }
    }

    struct Reply { let status: Int; let headers: [String: String]; let body: Data
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:] }
    }

    /// One request on a fresh connection (a raw socket: exact bytes, no client-side magic).
    func request(_ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) -> Reply {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var text = "\(method) \(path) HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        var h = headers
        if let body { h["Content-Length"] = String(body.utf8.count); if h["Content-Type"] == nil { h["Content-Type"] = "application/json" } }
        for (k, v) in h { text += "\(k): \(v)\r\n" }
        text += "\r\n" + (body ?? "")
        _ = Array(text.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            data.append(contentsOf: buf[0..<n])
        }
        guard let end = data.range(of: Data("\r\n\r\n".utf8)) else { return Reply(status: -1, headers: [:], body: Data()) }
        let lines = String(decoding: data[..<end.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        var hs: [String: String] = [:]
        for l in lines.dropFirst() { let p = l.split(separator: ":", maxSplits: 1); hs[p[0].lowercased()] = p.count > 1 ? p[1].trimmingCharacters(in: .whitespaces) : "" }
        var body = Data(data[end.upperBound...])
        if hs["transfer-encoding"] == "chunked" { body = LiveDaemon.dechunk(body) }
        return Reply(status: Int(lines[0].split(separator: " ")[1]) ?? -1, headers: hs, body: body)
    }

    static func dechunk(_ d: Data) -> Data {
        var out = Data(), i = d.startIndex
        while let le = d[i...].range(of: Data("\r\n".utf8)) {
            guard let size = Int(String(decoding: d[i..<le.lowerBound], as: UTF8.self), radix: 16), size > 0 else { break }
            out.append(d[le.upperBound..<(le.upperBound + size)])
            i = le.upperBound + size + 2
        }
        return out
    }

    static let spec = """
    {"name": "api-test", "data": {"format": "npy", "path": "imgs.npy"},
     "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8},
     "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},
     "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 16, "epochs": 2},
     "checkpoint": {"every_steps": 2, "keep_last": 10}, "threads": 1}
    """

    /// Pauses a running job and checks that it ends paused with a checkpoint at the step it
    /// reached; returns that step.
    func pauseCheckpointed(_ id: String) -> Int {
        #expect(request("POST", "/v1/jobs/\(id)/pause").status == 202)
        let paused = waitFor(id, ["paused"])
        #expect(paused["state"] as? String == "paused")
        let step = (paused["progress"] as? [String: Any])?["step"] as? Int ?? -1
        let checkpoints = request("GET", "/v1/jobs/\(id)/checkpoints").json["checkpoints"] as? [[String: Any]] ?? []
        #expect(checkpoints.last?["step"] as? Int == step, "pausing writes a checkpoint at the step reached")
        return step
    }

    func waitFor(_ id: String, _ states: Set<String>, timeout: Double = 60) -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        var last: [String: Any] = [:]
        while Date() < deadline {
            last = request("GET", "/v1/jobs/\(id)").json
            if let s = last["state"] as? String, states.contains(s) { return last }
            usleep(100_000)
        }
        return last
    }
}

/// A job's live event stream (SSE), read on a thread of its own from creation until it ends;
/// created once the daemon's stream follows the job, so nothing asked of the job after is missed.
final class EventStream: Sendable {
    private let received = Mutex<String>("")

    init(_ d: LiveDaemon, _ id: String, query: String = "") {
        let streams = d.scheduler.streamCount(id)
        Thread { [self] in
            let body = d.request("GET", "/v1/jobs/\(id)/events" + query).body
            received.withLock { $0 = String(decoding: body, as: UTF8.self) }
        }.start()
        let connected = Date().addingTimeInterval(10)
        while d.scheduler.streamCount(id) <= streams && Date() < connected { usleep(5_000) }
    }

    /// What the stream carried, once it ended (waits up to 10 s for that).
    var text: String {
        let deadline = Date().addingTimeInterval(10)
        while received.withLock({ $0.isEmpty }) && Date() < deadline { usleep(20_000) }
        return received.withLock { $0 }
    }
}

/// Numbers appended from any thread.
final class CountLog: @unchecked Sendable {
    /// Safe to share: `list` is guarded by `lock`.
    private let lock = NSLock()
    private var list: [Int] = []
    func append(_ n: Int) { lock.lock(); list.append(n); lock.unlock() }
    var values: [Int] { lock.lock(); defer { lock.unlock() }; return list }
}

@Suite(.serialized) struct APITests {
    @Test func jobLifecycleOverHTTP() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        #expect(d.request("GET", "/healthz").status == 200)
        let info = d.request("GET", "/v1/info")
        #expect(info.status == 200 && info.json["version"] as? String == API.version)
        #expect(info.json["api_cpu_share"] is NSNull)   // this daemon has no CPU budget
        let bf16 = info.json["bf16"] as? [String: Bool]
        #expect(bf16?["onednn_amx"] == Runtime.bf16.onednn_amx && bf16?["avx512_bf16"] == Runtime.bf16.avx512_bf16 && bf16?.count == 5, "\(info.json)")
        let created = d.request("POST", "/v1/jobs", body: LiveDaemon.spec)
        #expect(created.status == 201, "\(String(decoding: created.body, as: UTF8.self))")
        let id = try #require(created.json["id"] as? String)
        #expect(created.headers["location"] == "/v1/jobs/\(id)")
        let done = d.waitFor(id, ["succeeded", "failed"])
        #expect(done["state"] as? String == "succeeded", "\(done)")
        #expect((done["progress"] as? [String: Any])?["step"] as? Int == 8)
        // Metrics: all, downsampled, incremental, CSV.
        let m = d.request("GET", "/v1/jobs/\(id)/metrics").json
        #expect((m["points"] as? [Any])?.count == 8 && m["next_after_step"] as? Int == 8)
        #expect((d.request("GET", "/v1/jobs/\(id)/metrics?max_points=3").json["points"] as? [Any])?.count == 3)
        #expect((d.request("GET", "/v1/jobs/\(id)/metrics?after_step=6").json["points"] as? [Any])?.count == 2)
        let csv = d.request("GET", "/v1/jobs/\(id)/metrics?format=csv")
        #expect(csv.headers["content-type"] == "text/csv" && String(decoding: csv.body, as: UTF8.self).split(separator: "\n").count == 9)
        #expect(d.request("GET", "/v1/jobs/\(id)/metrics?max_points=0").status == 400)
        #expect(d.request("GET", "/v1/jobs/\(id)/metrics?format=xml").status == 400)
        // SVG, logs, events of a finished job.
        let svg = d.request("GET", "/v1/jobs/\(id)/loss.svg")
        #expect(svg.headers["content-type"] == "image/svg+xml" && String(decoding: svg.body, as: UTF8.self).hasPrefix("<svg"))
        #expect(d.request("GET", "/v1/jobs/\(id)/logs").status == 200)
        let events = d.request("GET", "/v1/jobs/\(id)/events")
        #expect(events.headers["content-type"] == "text/event-stream" && String(decoding: events.body, as: UTF8.self).contains("\"state\":\"succeeded\""))
        for bad in ["abc", "-1", "60001", "1.5"] { #expect(d.request("GET", "/v1/jobs/\(id)/events?interval_ms=\(bad)").status == 400, "\(bad)") }
        // Checkpoints: list, download with ETag = SHA-256, ranges, latest, encoder export.
        let list = try #require(d.request("GET", "/v1/jobs/\(id)/checkpoints").json["checkpoints"] as? [[String: Any]])
        #expect(list.map { $0["step"] as? Int } == [2, 4, 6, 8])
        let last = list.last!
        let file = d.request("GET", "/v1/jobs/\(id)/checkpoints/latest")
        #expect(file.status == 200 && file.headers["etag"] == "\"\(last["sha256"] as! String)\"" && file.body.count == last["bytes"] as? Int)
        let part = d.request("GET", "/v1/jobs/\(id)/checkpoints/\(last["name"] as! String)", headers: ["Range": "bytes=10-19"])
        #expect(part.status == 206 && part.body == file.body[10..<20])
        #expect(d.request("GET", "/v1/jobs/\(id)/checkpoints/nope").status == 404)
        let enc = d.request("GET", "/v1/jobs/\(id)/checkpoints/latest?format=encoder")
        #expect(enc.status == 200 && enc.body.count > 8)
        // State errors: a finished job cannot be paused or cancelled; it can be deleted.
        #expect(d.request("POST", "/v1/jobs/\(id)/pause").status == 409)
        #expect(d.request("POST", "/v1/jobs/\(id)/cancel").status == 409)
        #expect(d.request("POST", "/v1/jobs/\(id)/resume").status == 409)
        #expect(d.request("DELETE", "/v1/jobs/\(id)").status == 204)
        #expect(d.request("GET", "/v1/jobs/\(id)").status == 404)
        #expect(!FileManager.default.fileExists(atPath: d.dir.appendingPathComponent("jobs/\(id)").path))
    }

    /// SimCLR and MoCo v3 through the daemon as MoCo runs: submitted, trained by a worker, curves
    /// with their own loss at chance, checkpoints, and the encoder exported with torchvision's
    /// keys (no head, no prefix); a method's section on another method is a 422 naming the field.
    @Test(arguments: ["simclr", "moco_v3"])
    func everyMethodRunsThroughTheDaemon(method: String) throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let section = method == "simclr" ? #""simclr": {"temperature": 0.5}"# : #""moco_v3": {"momentum": 0.9, "temperature": 0.2}"#
        let spec = """
        {"name": "api-\(method)", "method": "\(method)", "data": {"format": "npy", "path": "imgs.npy"},
         "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8, "mlp_hidden": 16}, \(section),
         "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 16, "epochs": 2, "warmup_epochs": 1},
         "checkpoint": {"every_steps": 2, "keep_last": 10}, "threads": 1}
        """
        let created = d.request("POST", "/v1/jobs", body: spec)
        let id = try #require(created.json["id"] as? String, "\(created.json)")
        let job = d.waitFor(id, ["succeeded", "failed"])
        #expect(job["state"] as? String == "succeeded", "\(job)")
        #expect((job["spec"] as? [String: Any])?["method"] as? String == method)
        let points = (d.request("GET", "/v1/jobs/\(id)/metrics").json["points"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == "step" }
        let chance = method == "simclr" ? log(31.0) : 4 * Double(Float(0.2)) * log(16.0)
        #expect(points.count == 8 && points.allSatisfy { abs(($0["loss_at_chance"] as? Double ?? 0) - chance) < 1e-9 && ($0["loss"] as? Double)?.isFinite == true })
        let list = d.request("GET", "/v1/jobs/\(id)/checkpoints").json["checkpoints"] as? [[String: Any]] ?? []
        #expect(list.map { $0["step"] as? Int } == [2, 4, 6, 8])
        let enc = d.request("GET", "/v1/jobs/\(id)/checkpoints/latest?format=encoder")
        let exported = try SafeTensorsFile.decode(Data(enc.body))
        #expect(enc.status == 200 && exported.tensors.first?.name == "conv1.weight")
        #expect(exported.tensors.allSatisfy { !$0.name.hasPrefix("fc.") && !$0.name.contains("encoder") && !$0.name.hasPrefix("predictor") })
        let wrong = d.request("POST", "/v1/jobs", body: spec.replacingOccurrences(of: "\"method\": \"\(method)\"", with: "\"method\": \"moco_v2\""))
        #expect(wrong.status == 422 && "\(wrong.json)".contains(method), "\(wrong.json)")
    }

    /// A bf16 job (run in a worker process) says which precision ran: in the job, in every
    /// metrics point and in the CSV. Where oneDNN has no bf16 kernels it is refused with the field.
    /// GET /v1/datasets: what lies under the data roots, each with its format told from its
    /// contents and its facts; a streamed job trains on a folder from it.
    @Test func datasetsUnderTheRootsAreListed() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let root = d.dir.appendingPathComponent("datasets")
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/images")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("folder"), to: root.appendingPathComponent("pets"))
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("corrupt"), to: root.appendingPathComponent("broken"))
        try FileManager.default.createDirectory(at: root.appendingPathComponent("notes"), withIntermediateDirectories: true)
        let r = d.request("GET", "/v1/datasets")
        #expect(r.status == 200)
        let list = r.json["datasets"] as? [[String: Any]] ?? []
        let byPath = Dictionary(uniqueKeysWithValues: list.compactMap { e in (e["path"] as? String).map { ($0, e) } })
        #expect(Set(byPath.keys) == ["broken", "imgs.npy", "pets"], "\(byPath.keys)")
        #expect(byPath["imgs.npy"]?["format"] as? String == "npy" && byPath["imgs.npy"]?["count"] as? Int == 64)
        let pets = try #require(byPath["pets"])
        #expect(pets["format"] as? String == "folder" && pets["count"] as? Int == 6 && pets["readable"] as? Int == 6)
        #expect((pets["classes"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["cat", "dog"])
        let broken = try #require(byPath["broken"])
        #expect(broken["count"] as? Int == 5 && broken["errors"] as? Int == 3, "\(broken)")
        #expect((broken["first_errors"] as? [String])?.contains("empty.jpg: empty file") == true, "\(broken)")
        // A job on the folder streams it: the index is cached in the job's directory, not in the data.
        let spec = LiveDaemon.spec.replacingOccurrences(of: #""data": {"format": "npy", "path": "imgs.npy"}"#,
                                                        with: #""data": {"format": "folder", "path": "pets"}"#)
            .replacingOccurrences(of: #""batch_size": 16"#, with: #""batch_size": 4"#)
        let created = d.request("POST", "/v1/jobs", body: spec)
        let id = try #require(created.json["id"] as? String, "\(created.json)")
        #expect(d.waitFor(id, ["succeeded", "failed"])["state"] as? String == "succeeded")
        #expect(FileManager.default.fileExists(atPath: d.dir.appendingPathComponent("jobs/\(id)/data-index.json").path))
        #expect(!FileManager.default.fileExists(atPath: root.appendingPathComponent("pets/data-index.json").path))
    }

    @Test func bf16JobSaysWhichPrecisionRan() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let body = LiveDaemon.spec.replacingOccurrences(of: #""threads": 1}"#, with: #""threads": 1, "precision": "bf16"}"#)
        #expect(body != LiveDaemon.spec)
        let created = d.request("POST", "/v1/jobs", body: body)
        guard Runtime.bf16.onednn_bf16 else {
            #expect(created.status == 422 && String(decoding: created.body, as: UTF8.self).contains("precision"))
            return
        }
        #expect(created.status == 201, "\(String(decoding: created.body, as: UTF8.self))")
        let id = try #require(created.json["id"] as? String)
        #expect(created.json["precision"] as? String == "bf16")
        let done = d.waitFor(id, ["succeeded", "failed"])
        #expect(done["state"] as? String == "succeeded" && done["precision"] as? String == "bf16", "\(done)")
        #expect((done["spec"] as? [String: Any])?["precision"] as? String == "bf16")
        let points = try #require(d.request("GET", "/v1/jobs/\(id)/metrics").json["points"] as? [[String: Any]])
        #expect(points.count == 8 && points.allSatisfy { $0["precision"] as? String == "bf16" })
        let csv = String(decoding: d.request("GET", "/v1/jobs/\(id)/metrics?format=csv").body, as: UTF8.self).split(separator: "\n")
        #expect(csv.first?.hasSuffix(",precision,allreduce_bytes,allreduce_seconds,data_errors") == true && csv.dropFirst().allSatisfy { $0.hasSuffix(",bf16,,,") })
        // An fp32 job says fp32.
        let plain = d.request("POST", "/v1/jobs", body: LiveDaemon.spec)
        #expect(plain.json["precision"] as? String == "fp32")
    }

    /// GET /v1/jobs/{id} is served from a cache, which must follow every write to the store.
    @Test func jobViewFollowsTheStore() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let store = d.scheduler.store
        _ = try store.create(JobRecord(id: "job_00000000000ca0ed", name: "cached", spec: LiveDaemon.spec))   // queued, never scheduled
        func view() -> [String: Any] { d.request("GET", "/v1/jobs/job_00000000000ca0ed").json }
        #expect(view()["state"] as? String == "queued")
        #expect((view()["progress"] as? [String: Any])?["step"] as? Int == 0)
        try store.updateProgress("job_00000000000ca0ed") { $0.step = 7; $0.lastLoss = 1.5 }
        #expect((view()["progress"] as? [String: Any])?["step"] as? Int == 7 && view()["last_loss"] as? Double == 1.5)
        try store.apply(.cancel, to: "job_00000000000ca0ed", reason: "test")
        #expect(view()["state"] as? String == "cancelled")
        #expect(d.request("GET", "/v1/jobs/job_00000000000ca0ed/checkpoints").status == 200)
        try store.delete("job_00000000000ca0ed")
        #expect(d.request("GET", "/v1/jobs/job_00000000000ca0ed").status == 404)
        #expect(d.request("GET", "/v1/jobs/job_00000000000ca0ed/checkpoints").status == 404)
    }

    /// The API's CPU budget limits exactly while a job trains, and a request during training
    /// under a tiny budget is still answered.
    @Test func cpuBudgetFollowsTraining() throws {
        let budget = CPUBudget(share: 0.001)
        let d = try LiveDaemon(budget: budget)
        defer { d.stop() }
        #expect(!budget.isLimited)
        let id = try #require(d.request("POST", "/v1/jobs", body: LiveDaemon.spec).json["id"] as? String)
        let done = d.waitFor(id, ["succeeded", "failed"])
        #expect(done["state"] as? String == "succeeded")
        // The job's end is recorded as its worker reports it; the scheduler lets the job go when
        // the worker process has exited, a moment later (under load, after this reply).
        let deadline = Date().addingTimeInterval(10)
        while d.runningCounts.last != 0 && Date() < deadline { usleep(10_000) }
        #expect(d.runningCounts == [1, 0])
        #expect(!budget.isLimited)
        #expect(d.request("GET", "/v1/info").json["api_cpu_share"] as? Double == 0.001)
        let metrics = String(decoding: d.request("GET", "/metrics").body, as: UTF8.self)
        #expect(metrics.contains("mocod_api_cpu_budget_limiting 0\n") && metrics.contains("mocod_api_cpu_budget_waits_total "))
        #expect(metrics.contains("mocod_http_connections_reclaimed_total 0\n"), "\(metrics)")
    }

    /// Pause a running job (it checkpoints and frees the slot), resume it (it continues from that
    /// checkpoint), and follow it live over Server-Sent Events.
    @Test func pauseResumeAndLiveEvents() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let long = LiveDaemon.spec.replacingOccurrences(of: "\"epochs\": 2", with: "\"epochs\": 40")
            .replacingOccurrences(of: "\"every_steps\": 2", with: "\"every_steps\": 1000")
        let id = try #require(d.request("POST", "/v1/jobs", body: long).json["id"] as? String)
        // Live events while it trains: the stream is read on another thread.
        let stream = EventStream(d, id)
        var job = d.waitFor(id, ["running"])
        let deadline = Date().addingTimeInterval(30)
        while ((job["progress"] as? [String: Any])?["step"] as? Int ?? 0) < 3 && Date() < deadline {
            usleep(50_000)
            job = d.request("GET", "/v1/jobs/\(id)").json
        }
        _ = d.pauseCheckpointed(id)
        #expect(d.scheduler.runningCount == 0)   // the slot is free
        #expect(d.request("POST", "/v1/jobs/\(id)/resume").status == 202)
        _ = d.waitFor(id, ["running"])
        #expect(d.request("POST", "/v1/jobs/\(id)/cancel").status == 202)
        let cancelled = d.waitFor(id, ["cancelled"])
        #expect(cancelled["state"] as? String == "cancelled")
        let log = String(decoding: d.request("GET", "/v1/jobs/\(id)/logs").body, as: UTF8.self)
        #expect(log.contains("resumed from ckpt-"), "\(log)")
        let events = stream.text
        #expect(events.contains("event: metric") && events.contains("event: checkpoint"))
        #expect(events.contains("\"state\":\"paused\"") && events.contains("\"state\":\"cancelled\""))
        // The log, live: its lines as events, the last state's before the stream ends.
        #expect(events.contains("event: log") && events.contains("resumed from ckpt-"), "\(events)")
        #expect(events.contains("state: cancelled ("), "\(events)")
    }

    /// A paced stream (`interval_ms`) holds metric and log events back to write them together; it
    /// loses and reorders none. Both streams follow a job queued behind another, from before it runs.
    @Test func pacedEventsLoseNothing() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let long = LiveDaemon.spec.replacingOccurrences(of: "\"epochs\": 2", with: "\"epochs\": 400")
        let blocker = try #require(d.request("POST", "/v1/jobs", body: long).json["id"] as? String)
        _ = d.waitFor(blocker, ["running"])
        let id = try #require(d.request("POST", "/v1/jobs", body: LiveDaemon.spec).json["id"] as? String)
        #expect(d.request("GET", "/v1/jobs/\(id)").json["state"] as? String == "queued")
        let plain = EventStream(d, id), paced = EventStream(d, id, query: "?interval_ms=250")
        #expect(d.request("POST", "/v1/jobs/\(blocker)/cancel").status == 202)
        #expect(d.waitFor(id, ["succeeded", "failed"])["state"] as? String == "succeeded")
        let all = Self.eventBlocks(plain.text), held = Self.eventBlocks(paced.text)
        #expect(held == all, "\(held)")
        #expect(all.filter { $0.hasPrefix("event: metric") }.count == 8 && all.last?.contains("\"state\":\"succeeded\"") == true, "\(all)")
        #expect(all.contains { $0.hasPrefix("event: log") && $0.contains("state: succeeded") }, "\(all)")
    }

    /// A stream's events, each as its lines.
    static func eventBlocks(_ text: String) -> [String] {
        text.components(separatedBy: "\n\n").filter { $0.hasPrefix("event: ") }
    }

    @Test func validationIdempotencyAndListing() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let bad = d.request("POST", "/v1/jobs", body: #"{"data": {"path": "imgs.npy"}, "optim": {"bacth_size": 3}, "colour": 1}"#)
        #expect(bad.status == 422)
        let fields = ((bad.json["error"] as? [String: Any])?["details"] as? [[String: Any]])?.compactMap { $0["field"] as? String } ?? []
        #expect(Set(fields) == ["optim.bacth_size", "colour"])
        #expect(d.request("POST", "/v1/jobs", body: "{").status == 422)
        #expect(d.request("POST", "/v1/jobs", body: LiveDaemon.spec, headers: ["Content-Type": "text/plain"]).status == 415)
        let dry = d.request("POST", "/v1/jobs?dry_run=true", body: LiveDaemon.spec)
        #expect(dry.status == 200 && dry.json["estimate"] != nil)
        #expect((d.request("GET", "/v1/jobs").json["jobs"] as? [Any])?.isEmpty == true)   // the dry run created nothing
        // Idempotency: same key and body → same job; other body → 409.
        let a = d.request("POST", "/v1/jobs", body: LiveDaemon.spec, headers: ["Idempotency-Key": "k-1"])
        let b = d.request("POST", "/v1/jobs", body: LiveDaemon.spec, headers: ["Idempotency-Key": "k-1"])
        #expect(a.status == 201 && b.status == 200 && a.json["id"] as? String == b.json["id"] as? String)
        let other = LiveDaemon.spec.replacingOccurrences(of: "api-test", with: "other")
        #expect(d.request("POST", "/v1/jobs", body: other, headers: ["Idempotency-Key": "k-1"]).status == 409)
        let second = d.request("POST", "/v1/jobs", body: other)
        // Pause the queued one, list by state, page with the cursor.
        let sid = second.json["id"] as! String
        #expect(d.request("POST", "/v1/jobs/\(sid)/pause").status == 202)
        #expect((d.request("GET", "/v1/jobs?state=paused").json["jobs"] as? [[String: Any]])?.first?["id"] as? String == sid)
        let page = d.request("GET", "/v1/jobs?limit=1").json
        #expect((page["jobs"] as? [Any])?.count == 1)
        let cursor = try #require(page["next_cursor"] as? String)
        #expect((d.request("GET", "/v1/jobs?limit=1&cursor=\(cursor)").json["jobs"] as? [[String: Any]])?.first?["id"] as? String == a.json["id"] as? String)
        // The last page says so with an explicit null (clients loop until it is null).
        let last = String(decoding: d.request("GET", "/v1/jobs?limit=500").body, as: UTF8.self)
        #expect(last.contains(#""next_cursor":null"#), "\(last.prefix(200))")
        #expect(d.request("GET", "/v1/jobs?state=bogus").status == 400)
        #expect(d.request("GET", "/v1/jobs?limit=0").status == 400)
        #expect(d.request("DELETE", "/v1/jobs/\(sid)").status == 409)   // not finished
        #expect(d.request("POST", "/v1/jobs/\(sid)/cancel").status == 202)
        #expect(d.request("GET", "/v1/jobs/missing").status == 404)
        #expect(d.request("PUT", "/v1/jobs").status == 405)
        #expect(d.request("GET", "/nowhere").status == 404)
        let metrics = String(decoding: d.request("GET", "/metrics").body, as: UTF8.self)
        #expect(metrics.contains("mocod_jobs{state=\"cancelled\"} 1") && metrics.contains("mocod_http_requests_total{route=\"/v1/jobs\""))
        _ = d.waitFor(a.json["id"] as! String, ["succeeded", "failed"])
    }

    /// Dataset paths stay inside the data roots.
    @Test func pathConfinement() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let outside = FileManager.default.temporaryDirectory.appendingPathComponent("outside-\(UUID())")
        try FileManager.default.createDirectory(at: outside, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: outside) }
        try LiveDaemon.writeImages(to: outside.appendingPathComponent("imgs.npy"), count: 64)
        try FileManager.default.createSymbolicLink(at: d.dir.appendingPathComponent("datasets/escape"), withDestinationURL: outside)
        for path in ["../imgs.npy", "/etc/passwd", outside.appendingPathComponent("imgs.npy").path, "escape/imgs.npy", "missing.npy"] {
            let r = d.request("POST", "/v1/jobs", body: LiveDaemon.spec.replacingOccurrences(of: "\"imgs.npy\"", with: "\"\(path)\""))
            #expect(r.status == 422, "\(path)")
            let fields = ((r.json["error"] as? [String: Any])?["details"] as? [[String: Any]])?.compactMap { $0["field"] as? String }
            #expect(fields == ["data.path"], "\(path)")
        }
    }

    /// Every route × no, wrong and malformed token: 401 everywhere but /healthz and the dashboard's files.
    @Test func authMatrix() throws {
        let token = "s3cret-token-0123456789"
        let d = try LiveDaemon(token: token)
        defer { d.stop() }
        let routes = OpenAPIRoutes.parse(OpenAPIDocument.text).map { ($0.method, $0.path.replacingOccurrences(of: "{id}", with: "job_x").replacingOccurrences(of: "{name}", with: "latest").replacingOccurrences(of: "{method}", with: "simclr")) }
        for (method, path) in routes {
            for header in [nil, "Bearer wrong-token-0000000000", "Basic \(token)", "Bearer", token] as [String?] {
                let r = d.request(method, path, body: method == "POST" ? "{}" : nil, headers: header.map { ["Authorization": $0] } ?? [:])
                if ["/healthz", "/", "/ui/app.js", "/ui/app.css"].contains(path) { #expect(r.status == 200) } else {
                    #expect(r.status == 401, "\(method) \(path) with \(header ?? "none")")
                    #expect(r.headers["www-authenticate"]?.hasPrefix("Bearer") == true)
                }
            }
            let ok = d.request(method, path, body: method == "POST" ? "{}" : nil, headers: ["Authorization": "Bearer \(token)"])
            #expect(ok.status != 401, "\(method) \(path) refused the right token")
        }
    }

    /// Every path and method in openapi.yaml is routed, and every route is in openapi.yaml.
    @Test func openAPIMatchesTheRoutes() throws {
        let documented = Set(OpenAPIRoutes.parse(OpenAPIDocument.text).map { "\($0.method) \($0.path)" })
        let d = try LiveDaemon()
        defer { d.stop() }
        let api = API(scheduler: d.scheduler, token: nil, openAPI: "")
        let routed = Set(api.routes().table.map { "\($0.method) \($0.pattern)" })
        #expect(documented == routed, "only documented: \(documented.subtracting(routed)); only routed: \(routed.subtracting(documented))")
        // The embedded document is the repository's openapi.yaml, byte for byte.
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("openapi.yaml")
        #expect(try String(contentsOf: file, encoding: .utf8) + "\n" == OpenAPIDocument.text + "\n" || (try String(contentsOf: file, encoding: .utf8)) == OpenAPIDocument.text + "\n")
        #expect(String(decoding: d.request("GET", "/openapi.yaml").body, as: UTF8.self) == OpenAPIDocument.text)
    }
}

/// Paths and methods of an OpenAPI document (the `paths:` section, two-space YAML as ours is written).
enum OpenAPIRoutes {
    static func parse(_ yaml: String) -> [(method: String, path: String)] {
        var out: [(String, String)] = []
        var inPaths = false, current: String?
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "paths:" { inPaths = true; continue }
            guard inPaths else { continue }
            if line.hasPrefix("  /") && line.hasSuffix(":") { current = String(line.dropFirst(2).dropLast()); continue }
            for m in ["get", "post", "put", "delete", "patch"] where line == "    \(m):" {
                if let current { out.append((m.uppercased(), current)) }
            }
        }
        return out
    }
}
