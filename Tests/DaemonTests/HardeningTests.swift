import Daemon
import Foundation
import HTTP
import Jobs
import Testing

/// Regression tests for issue 9's findings, on an in-process daemon (see `LiveDaemon`).
@Suite(.serialized) struct HardeningTests {
    static func spec(_ replacing: [(String, String)]) -> String {
        var s = LiveDaemon.spec
        for (a, b) in replacing { s = s.replacingOccurrences(of: a, with: b) }
        return s
    }

    func fields(_ r: LiveDaemon.Reply) -> [String] {
        ((r.json["error"] as? [String: Any])?["details"] as? [[String: Any]])?.compactMap { $0["field"] as? String } ?? []
    }

    func jobCount(_ d: LiveDaemon) -> Int { (d.request("GET", "/v1/jobs?limit=500").json["jobs"] as? [Any])?.count ?? -1 }

    /// Finding 1: `bn_splits: 0` ended the process (a remainder by zero in validation). Every
    /// numeric field at 0, -1, a huge value and a fraction is a 422 naming that field, with and
    /// without dry_run, and nothing is created.
    @Test(arguments: [
        ("\"bn_splits\": 2", "\"bn_splits\": 0", "moco.bn_splits"),
        ("\"bn_splits\": 2", "\"bn_splits\": -1", "moco.bn_splits"),
        ("\"bn_splits\": 2", "\"bn_splits\": 1e18", "moco.bn_splits"),
        ("\"bn_splits\": 2", "\"bn_splits\": 1.5", "moco.bn_splits"),
        ("\"batch_size\": 16", "\"batch_size\": 0", "optim.batch_size"),
        ("\"batch_size\": 16", "\"batch_size\": -1", "optim.batch_size"),
        ("\"batch_size\": 16", "\"batch_size\": 1e18", "optim.batch_size"),
        ("\"queue\": 32", "\"queue\": 0", "moco.queue"),
        ("\"queue\": 32", "\"queue\": 1e18", "moco.queue"),
        ("\"epochs\": 2", "\"epochs\": 0", "optim.epochs"),
        ("\"epochs\": 2", "\"epochs\": 1e18", "optim.epochs"),
        ("\"width\": 4", "\"width\": 0", "model.width"),
        ("\"dim\": 8", "\"dim\": -1", "model.dim"),
        ("\"size\": 8", "\"size\": 1e18", "augment.size"),
        ("\"temperature\": 0.2", "\"temperature\": 0", "moco.temperature"),
        ("\"temperature\": 0.2", "\"temperature\": 1e38", "moco.temperature"),
        ("\"momentum\": 0.9", "\"momentum\": 1e18", "moco.momentum"),
        ("\"every_steps\": 2", "\"every_steps\": 0", "checkpoint.every_steps"),
        ("\"keep_last\": 10", "\"keep_last\": 1e18", "checkpoint.keep_last"),
        ("\"threads\": 1", "\"threads\": 0", "threads"),
        ("\"epochs\": 2}", "\"epochs\": 2, \"milestones\": [-1]}", "optim.milestones"),
        ("\"epochs\": 2}", "\"epochs\": 2, \"warmup_epochs\": 1e18}", "optim.warmup_epochs"),
        ("\"epochs\": 2}", "\"epochs\": 2, \"weight_decay\": 1e30}", "optim.weight_decay"),
        ("\"path\": \"imgs.npy\"}", "\"path\": \"imgs.npy\", \"limit\": 0}", "data.limit"),
    ])
    func numericFieldsAreRangeCheckedFirst(_ from: String, _ to: String, _ field: String) throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let body = Self.spec([(from, to)])
        #expect(body != LiveDaemon.spec, "the substitution did not apply")
        for path in ["/v1/jobs?dry_run=true", "/v1/jobs"] {
            let r = d.request("POST", path, body: body)
            #expect(r.status == 422, "\(path) \(to): \(r.status) \(String(decoding: r.body, as: UTF8.self))")
            #expect(fields(r).contains(field), "\(to): \(fields(r))")
        }
        #expect(jobCount(d) == 0)
        #expect(d.request("GET", "/healthz").status == 200)
    }

    /// Finding 2: NUL in a dataset path passed validation and a symlink led outside the root.
    /// NUL and control characters are refused before any file-system call; ids with NUL are 400.
    @Test func nulAndControlCharactersNeverReachTheFileSystem() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let outside = FileManager.default.temporaryDirectory.appendingPathComponent("secret-\(UUID()).npy")
        try LiveDaemon.writeImages(to: outside, count: 64)
        defer { try? FileManager.default.removeItem(at: outside) }
        try FileManager.default.createSymbolicLink(at: d.dir.appendingPathComponent("datasets/secret.npy"), withDestinationURL: outside)
        for path in [#"secret.npy\u0000"#, #"etc\u0000"#, #"d\u0000/imgs.npy"#, #"imgs.npy\u0000"#, #"imgs\u0001.npy"#, #"imgs.npy\n"#, "secret.npy"] {
            for target in ["/v1/jobs?dry_run=true", "/v1/jobs"] {
                let r = d.request("POST", target, body: Self.spec([("\"imgs.npy\"", "\"\(path)\"")]))
                #expect(r.status == 422 && fields(r) == ["data.path"], "\(path) \(target): \(r.status) \(String(decoding: r.body, as: UTF8.self))")
            }
        }
        #expect(jobCount(d) == 0)
        // A real job, then its id with a NUL (or another control character) appended.
        let created = d.request("POST", "/v1/jobs", body: Self.spec([("\"epochs\": 2", "\"epochs\": 1")]))
        let id = try #require(created.json["id"] as? String)
        #expect(d.request("GET", "/v1/jobs/\(id)").status == 200)
        // Links read as written: no escaped slashes (`\/v1\/jobs`).
        let text = String(decoding: d.request("GET", "/v1/jobs/\(id)").body, as: UTF8.self)
        #expect(text.contains("\"/v1/jobs/\(id)\"") && !text.contains("\\/"), "\(text.prefix(300))")
        for suffix in ["%00", "%0a", "%7f", "%2f..", "%ff"] {
            let r = d.request("GET", "/v1/jobs/\(id)\(suffix)")
            #expect(r.status == 400 || r.status == 404, "\(suffix): \(r.status)")
            #expect(r.json["id"] == nil, "\(suffix) returned the job")
        }
        #expect(d.request("GET", "/v1/jobs/\(id)/checkpoints/latest%00").status == 400)
        #expect(d.request("POST", "/v1/jobs/\(id)%00/cancel").status == 400)
        #expect(d.request("GET", "/v1/jobs/not-a-job-id").status == 404)
        _ = d.waitFor(id, ["succeeded", "failed"])
    }

    /// A dataset symlink that pointed inside the root at submission and outside it when the job
    /// starts: the job fails (the path is resolved again, and the opened file is checked), and its
    /// reason names the file as the user gave it, not by a server path.
    @Test func symlinkSwappedAfterSubmissionIsNotFollowedOut() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let outside = FileManager.default.temporaryDirectory.appendingPathComponent("swap-\(UUID())")
        try FileManager.default.createDirectory(at: outside, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: outside) }
        try LiveDaemon.writeImages(to: outside.appendingPathComponent("imgs.npy"), count: 64)
        let link = d.dir.appendingPathComponent("datasets/link.npy")
        try FileManager.default.createSymbolicLink(at: link, withDestinationURL: d.dir.appendingPathComponent("datasets/imgs.npy"))
        // The first job holds the only slot while the second waits in the queue.
        let first = try #require(d.request("POST", "/v1/jobs", body: LiveDaemon.spec).json["id"] as? String)
        let second = d.request("POST", "/v1/jobs", body: Self.spec([("\"imgs.npy\"", "\"link.npy\"")]))
        #expect(second.status == 201)
        let id = try #require(second.json["id"] as? String)
        try FileManager.default.removeItem(at: link)
        try FileManager.default.createSymbolicLink(at: link, withDestinationURL: outside.appendingPathComponent("imgs.npy"))
        _ = d.waitFor(first, ["succeeded", "failed"])
        let job = d.waitFor(id, ["succeeded", "failed"])
        #expect(job["state"] as? String == "failed")
        let reason = job["failure_reason"] as? String ?? ""
        #expect(reason.contains("link.npy") && reason.contains("outside"), "\(reason)")
        #expect(!reason.contains(d.dir.path) && !reason.contains(outside.path), "absolute path in \(reason)")
    }

    /// Finding 6: strict JSON. Trailing commas, NaN/Infinity, duplicate keys, deep nesting and
    /// invalid UTF-8 are 422s naming the problem, never a job.
    @Test func specsAreStrictJSON() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let cases: [(String, String)] = [
            (Self.spec([("\"threads\": 1}", "\"threads\": 1,}")]), "trailing comma"),
            (Self.spec([("\"dim\": 8}", "\"dim\": 8,},")]), "trailing comma"),
            (Self.spec([("\"lr_unused\"", "")]).replacingOccurrences(of: "\"epochs\": 2", with: "\"epochs\": 2, \"lr\": NaN"), "NaN"),
            (Self.spec([("\"temperature\": 0.2", "\"temperature\": Infinity")]), "Infinity"),
            (Self.spec([("\"epochs\": 2", "\"epochs\": 2, \"epochs\": 3")]), "duplicate"),
            (String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000), "nesting"),
            ("{\"name\": \"a\" // comment\n}", "comment"),
        ]
        for (body, problem) in cases {
            for target in ["/v1/jobs?dry_run=true", "/v1/jobs"] {
                let r = d.request("POST", target, body: body)
                let text = String(decoding: r.body, as: UTF8.self)
                #expect(r.status == 422 && text.contains(problem), "\(problem) \(target): \(r.status) \(text.prefix(300))")
            }
        }
        #expect(jobCount(d) == 0)
    }

    /// On shutdown an open event stream gets a final `shutdown` event and ends at once (it
    /// used to hold shutdown for the 10 s grace period and be cut without one).
    @Test func eventStreamsEndWithAFinalEventOnShutdown() throws {
        let d = try LiveDaemon()
        let created = d.request("POST", "/v1/jobs", body: Self.spec([("\"epochs\": 2", "\"epochs\": 50")]))
        let id = try #require(created.json["id"] as? String)
        _ = d.waitFor(id, ["running"])
        let stream = try RawStream(port: d.port, request: "GET /v1/jobs/\(id)/events HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(stream.read(until: "event: state", timeout: 5))
        let start = Date()
        let stopper = Thread { d.stop() }
        stopper.start()
        #expect(stream.read(until: "event: shutdown", timeout: 20), "\(stream.text.suffix(500))")
        let ended = stream.readToEOF(timeout: 20)
        let seconds = Date().timeIntervalSince(start)
        #expect(ended, "the stream did not end")
        // The job checkpoints first (well under a second here); the grace period was 10 s.
        #expect(seconds < 5, "stream ended \(seconds) s after shutdown began")
        while d.server.connectionCount > 0 && Date().timeIntervalSince(start) < 20 { usleep(20_000) }
    }
}

/// A raw client socket that reads a streaming response as it comes.
final class RawStream {
    let fd: Int32
    private(set) var text = ""

    init(port: Int, request: String) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard ok == 0 else { close(fd); throw POSIXError(.ECONNREFUSED) }
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = Array(request.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    deinit { close(fd) }

    /// Reads until `marker` has arrived (true) or the time is up (false).
    func read(until marker: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !text.contains(marker) {
            guard Date() < deadline, readOnce() != 0 else { return text.contains(marker) }
        }
        return true
    }

    /// Reads until the server closes (true) or the time is up (false).
    func readToEOF(timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if readOnce() == 0 { return true } }
        return false
    }

    /// Bytes read: > 0 data, 0 end of stream, -1 nothing yet.
    private func readOnce() -> Int {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 { text += String(decoding: buf[0..<n], as: UTF8.self); return n }
        if n == 0 { return 0 }
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? -1 : 0
    }
}
