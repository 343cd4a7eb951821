import Autograd
import Data
import Foundation
import HTTP
import Jobs
import Kernels
import MoCo
import NN

/// The HTTP API of the daemon: routes over the scheduler and the store (see openapi.yaml).
public final class API: Sendable {
    public let scheduler: Scheduler
    let token: String?
    let openAPI: String
    public static let version = "0.1.0"
    // NSLock, not Synchronization.Mutex: Mutex spins when contended, and an HTTP thread (low
    // priority, on a busy machine) is often preempted while holding the lock.
    let stats = Locked(HTTPStats())
    let jobCache = Locked([String: CachedJob]())
    let specCache = Locked([String: JobSpec]())
    /// The server this API answers on, for its connection counters in `/metrics` (set once it exists).
    let server = Locked<HTTPServer?>(nil)
    public func attach(_ server: HTTPServer) { self.server.withLock { $0 = server } }

    /// A job as last read from the store, with its JSON; valid while the store's generation is
    /// unchanged, so polling a training job (its progress is stored about once a second) costs
    /// neither a database read nor an encoding.
    struct CachedJob: Sendable {
        var generation: UInt64
        var record: JobRecord
        var json: [UInt8]
    }

    /// The server's CPU budget for requests while a job trains (nil: no limit).
    let budget: CPUBudget?

    public init(scheduler: Scheduler, token: String?, openAPI: String, budget: CPUBudget? = nil) {
        self.scheduler = scheduler
        self.token = token
        self.openAPI = openAPI
        self.budget = budget
    }

    var store: JobStore { scheduler.store }

    /// The full handler: authentication, routing, and request accounting for `/metrics`.
    public func handler() -> Handler {
        let router = routes()
        return { [self] request in
            let start = Date()
            let matched = router.match(method: request.method, path: request.path)
            var response: HTTPResponse
            if request.path != "/healthz" && !Dashboard.isPublic(request.path), let failure = authenticate(request) {
                response = failure
            } else {
                response = router.handle(request, matched)
            }
            let route: String
            if case .found(_, _, let pattern) = matched { route = pattern } else { route = "unmatched" }
            let seconds = Date().timeIntervalSince(start)
            let sample = HTTPStats.Sample(route: route, method: request.method, status: response.status.code, seconds: seconds)
            stats.withLock { $0.record(sample) }
            return response
        }
    }

    /// Bearer token, compared in constant time; nil when the request may pass.
    func authenticate(_ request: HTTPRequest) -> HTTPResponse? {
        guard let token else { return nil }
        let challenge = HTTPHeaders([("WWW-Authenticate", "Bearer realm=\"mocod\"")])
        guard let header = request.headers["Authorization"] else {
            return .error(.unauthorized, code: "unauthorized", message: "missing bearer token", headers: challenge)
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            return .error(.unauthorized, code: "unauthorized", message: "malformed Authorization header; use 'Bearer <token>'", headers: challenge)
        }
        guard constantTimeEqual(Array(parts[1].utf8), Array(token.utf8)) else {
            return .error(.unauthorized, code: "unauthorized", message: "invalid token", headers: challenge)
        }
        return nil
    }

    // MARK: - Routes

    public func routes() -> Router {
        var r = Router()
        r.add("GET", "/healthz") { [self] _ in health() }
        for (path, asset) in Dashboard.paths(authRequired: token != nil) { r.add("GET", path) { Dashboard.respond(asset, $0) } }
        r.add("GET", "/v1/presets/{method}") { req in
            let name = req.pathParameters["method"] ?? ""
            guard let method = JobSpec.Method(rawValue: name) else {
                return .error(.notFound, code: "not_found", message: "no method \(name); the methods are \(JobSpec.Method.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let json = (try? JSONSerialization.data(withJSONObject: JobSpec.preset(method), options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
            return HTTPResponse(status: .ok, headers: HTTPHeaders([("Content-Type", "application/json")]), body: .bytes(Array(json) + [0x0a]))
        }
        r.add("GET", "/openapi.yaml") { [self] _ in HTTPResponse(contentType: "application/yaml", text: openAPI) }
        r.add("GET", "/v1/info") { [self] _ in info() }
        r.add("GET", "/v1/datasets") { [self] _ in datasets() }
        r.add("GET", "/metrics") { [self] _ in prometheus() }
        r.add("POST", "/v1/jobs") { [self] in submit($0) }
        r.add("GET", "/v1/jobs") { [self] in list($0) }
        r.add("GET", "/v1/jobs/{id}") { [self] req in
            mapError {
                guard let c = try cachedJob(req.pathParameters["id"] ?? "") else { throw JobError(.notFound, "no job \(req.pathParameters["id"] ?? "")") }
                return HTTPResponse(status: .ok, headers: HTTPHeaders([("Content-Type", "application/json")]), body: .bytes(c.json))
            }
        }
        r.add("DELETE", "/v1/jobs/{id}") { [self] req in
            mapError { try scheduler.delete(try jobID(req)); return HTTPResponse(status: .noContent) }
        }
        r.add("POST", "/v1/jobs/{id}/cancel") { [self] req in mapError { jobResponse(try scheduler.cancel(try jobID(req)), status: .accepted) } }
        r.add("POST", "/v1/jobs/{id}/pause") { [self] req in mapError { jobResponse(try scheduler.pause(try jobID(req)), status: .accepted) } }
        r.add("POST", "/v1/jobs/{id}/resume") { [self] req in mapError { jobResponse(try scheduler.resume(try jobID(req)), status: .accepted) } }
        r.add("GET", "/v1/jobs/{id}/metrics") { [self] req in withJob(req) { try metrics($0, req) } }
        r.add("GET", "/v1/jobs/{id}/events") { [self] req in withJob(req) { try events($0, req) } }
        r.add("GET", "/v1/jobs/{id}/loss.svg") { [self] req in withJob(req) { try lossSVG($0) } }
        r.add("GET", "/v1/jobs/{id}/checkpoints") { [self] req in withJob(req) { try checkpoints($0) } }
        r.add("GET", "/v1/jobs/{id}/checkpoints/{name}") { [self] req in withJob(req) { try download($0, req) } }
        r.add("POST", "/v1/jobs/{id}/evaluations") { [self] req in submitEvaluation(req, embedding: false) }
        r.add("GET", "/v1/jobs/{id}/evaluations") { [self] req in
            withJob(req) { j in
                let children = try store.jobs(parent: j.id, limit: 500).map(scheduler.current)
                return .json(JobList(jobs: children.map(view), next_cursor: nil))
            }
        }
        r.add("POST", "/v1/jobs/{id}/embeddings") { [self] req in submitEvaluation(req, embedding: true) }
        r.add("GET", "/v1/jobs/{id}/artifacts/{name}") { [self] req in
            withJob(req) { j in
                let name = req.pathParameters["name"] ?? ""
                let result = j.result.flatMap { try? JSONDecoder().decode(EvaluationResult.self, from: Data($0.utf8)) }
                guard let artifact = result?.artifact, artifact == name else {
                    throw JobError(.notFound, "job \(j.id) has no artifact \(name)" + (j.kind == .embedding && j.state != .succeeded ? " yet (it is \(j.state.rawValue))" : ""))
                }
                let path = scheduler.settings.jobDirectory(j.id).appendingPathComponent(artifact)
                return FileResponder.respond(path: path.path, request: req.head, etag: result?.sha256,
                                             extraHeaders: HTTPHeaders([("Content-Disposition", "attachment; filename=\"\(j.id)-\(artifact)\"")]))
            }
        }
        r.add("GET", "/v1/jobs/{id}/logs") { [self] req in
            withJob(req) { j in
                var lines: Int?
                if let t = req.query["tail"] {
                    guard let n = Int(t), (1...100_000).contains(n) else { throw JobError(.invalid, "tail must be an integer between 1 and 100000") }
                    lines = n
                }
                let url = scheduler.settings.jobDirectory(j.id).appendingPathComponent("job.log")
                let text = (try? String(contentsOf: url, encoding: .utf8)) ?? ""
                return HTTPResponse(contentType: "text/plain; charset=utf-8", text: lines.map { String(JobLog.tail(text, lines: $0)) } ?? text)
            }
        }
        return r
    }

    func mapError(_ body: () throws -> HTTPResponse) -> HTTPResponse {
        do { return try body() } catch let e as JobError {
            let status: HTTPStatus = switch e.code {
            case .notFound: .notFound
            case .conflict, .invalidState: .conflict
            case .invalid: .badRequest
            case .unavailable: .serviceUnavailable
            case .internalError: .internalServerError
            case .storage: .insufficientStorage
            }
            return .error(status, code: e.code.rawValue, message: e.message)
        } catch let e as SpecError {
            return .error(.unprocessableContent, code: "invalid_spec", message: "the job spec has \(e.issues.count) problem(s)",
                          details: e.issues.map { ErrorDetail(field: $0.field, problem: $0.problem) })
        } catch {
            return .error(.internalServerError, code: "internal", message: "\(error)")
        }
    }

    func withJob(_ req: HTTPRequest, _ body: (JobRecord) throws -> HTTPResponse) -> HTTPResponse {
        mapError {
            guard let c = try cachedJob(req.pathParameters["id"] ?? "") else { throw JobError(.notFound, "no job \(req.pathParameters["id"] ?? "")") }
            return try body(c.record)
        }
    }

    /// The job from the cache while the store has not been written since, else from the store
    /// (as the scheduler sees it: a decided end not yet stored shows). Ids are checked for their
    /// shape first, so no other string reaches the store or a file name.
    func cachedJob(_ id: String) throws -> CachedJob? {
        guard Self.isJobID(id) else { return nil }
        let generation = store.generation
        let pending = scheduler.hasPendingTransitions
        if !pending, let c = jobCache.withLock({ $0[id] }), c.generation == generation { return c }
        guard let stored = try store.job(id) else { return nil }
        let record = scheduler.current(stored)
        let c = CachedJob(generation: generation, record: record, json: jobJSON(record) + [0x0a])
        if pending { return c }
        jobCache.withLock { cache in
            if cache.count >= 1024 { cache.removeAll() }
            cache[id] = c
        }
        return c
    }

    /// Job ids as the scheduler makes them: `job_` and 16 lowercase hex digits.
    static func isJobID(_ id: String) -> Bool {
        let u = Array(id.utf8)
        return u.count == 20 && id.hasPrefix("job_") && u[4...].allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// A job id from the path, or 404 when it cannot be one.
    func jobID(_ req: HTTPRequest) throws -> String {
        let id = req.pathParameters["id"] ?? ""
        guard Self.isJobID(id) else { throw JobError(.notFound, "no job \(id.debugDescription); ids look like job_0123456789abcdef") }
        return id
    }

    /// `ok`, or `degraded` with the reason (the store cannot be written, a job's end is not yet
    /// recorded). Still 200: reads keep working, and restarting the daemon would not help.
    func health() -> HTTPResponse {
        if let reason = scheduler.degradedReason { return .json(["status": "degraded", "reason": reason]) }
        return .json(["status": "ok"])
    }

    // MARK: - Jobs

    func submit(_ req: HTTPRequest) -> HTTPResponse {
        mapError {
            if let ct = req.headers["Content-Type"], !ct.lowercased().hasPrefix("application/json") {
                return .error(.unsupportedMediaType, code: "unsupported_media_type", message: "send the job spec as application/json")
            }
            let body = Data(req.body)
            if req.query["dry_run"] == "true" {
                let spec = try scheduler.validate(body).get()
                return .json(DryRun(spec: spec, checks: .init(valid: true, queue_multiple_of_batch: spec.moco.map { $0.queue % spec.optim.batch_size == 0 }),
                                    estimate: .init(memory_bytes: Scheduler.estimatedMemoryBytes(spec), memory: spec.memoryEstimate,
                                                    learning_rate: Double(spec.effectiveLearningRate))))
            }
            let key = req.headers["Idempotency-Key"]
            if let key, key.isEmpty || key.count > 200 { throw JobError(.invalid, "Idempotency-Key must be 1 to 200 characters") }
            let priority = Int(req.query["priority"] ?? "0") ?? Int.min
            guard (-1000...1000).contains(priority) else { throw JobError(.invalid, "priority must be an integer between -1000 and 1000") }
            let (job, created) = try scheduler.submit(body, idempotencyKey: key, priority: priority)
            return jobResponse(job, status: created ? .created : .ok, headers: HTTPHeaders([("Location", "/v1/jobs/\(job.id)")]))
        }
    }

    /// `POST /v1/jobs/{id}/evaluations` and `.../embeddings`: 202 with the new job (it is queued).
    func submitEvaluation(_ req: HTTPRequest, embedding: Bool) -> HTTPResponse {
        mapError {
            if let ct = req.headers["Content-Type"], !ct.lowercased().hasPrefix("application/json") {
                return .error(.unsupportedMediaType, code: "unsupported_media_type", message: "send the request as application/json")
            }
            let job = try scheduler.submitEvaluation(of: try jobID(req), Data(req.body), embedding: embedding)
            return jobResponse(job, status: .accepted, headers: HTTPHeaders([("Location", "/v1/jobs/\(job.id)")]))
        }
    }

    func list(_ req: HTTPRequest) -> HTTPResponse {
        mapError {
            let q = req.query
            var state: JobState?
            if let s = q["state"] {
                guard let parsed = JobState(rawValue: s) else { throw JobError(.invalid, "state must be one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))") }
                state = parsed
            }
            var kind: JobKind?
            if let k = q["kind"] {
                guard let parsed = JobKind(rawValue: k) else { throw JobError(.invalid, "kind must be one of \(JobKind.allCases.map(\.rawValue).joined(separator: ", "))") }
                kind = parsed
            }
            let limit = Int(q["limit"] ?? "50") ?? -1
            guard limit >= 1 && limit <= 500 else { throw JobError(.invalid, "limit must be between 1 and 500") }
            var cursor: Int64?
            if let c = q["cursor"], !c.isEmpty { guard let v = Int64(c) else { throw JobError(.invalid, "invalid cursor") }; cursor = v }
            let jobs = try store.jobs(state: state, kind: kind, limit: limit, before: cursor).map(scheduler.current)
            let next = jobs.count == limit ? jobs.last?.seq.map(String.init) : nil
            return .json(JobList(jobs: jobs.map(view), next_cursor: next))
        }
    }


    struct JobView: Encodable {
        struct Progress: Encodable { var epoch: Int; var step: Int; var total_steps: Int; var images_per_second: Double?; var eta_seconds: Double? }
        var id: String, name: String, state: JobState, priority: Int
        /// `train`, `evaluation` or `embedding`; the latter two name their training job.
        var kind: JobKind
        var parent_id: String?
        /// What an evaluation or embedding found (null until it has).
        var result: EvaluationResult?
        var created_at: Date, started_at: Date?, finished_at: Date?
        var failure_reason: String?
        /// Why the job is in its state (its latest transition's reason); every terminal job has one.
        var reason: String?
        var progress: Progress
        var last_loss: Double?, best_knn_top1: Double?
        /// Worker restarts after abnormal exits, over the job's life.
        var restarts: Int
        /// The precision the job computes in (the spec's `precision`).
        var precision: Precision?
        var spec: JobSpec?
        /// An evaluation's or embedding's request, as stored (checkpoint resolved, defaults filled in).
        var evaluation: EvaluationSpec?
        var links: [String: String]
    }

    struct JobList: Encodable {
        var jobs: [JobView]
        /// `null` on the last page (written, not left out: clients loop until it is null).
        var next_cursor: String?
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(jobs, forKey: .jobs)
            try c.encode(next_cursor, forKey: .next_cursor)
        }
        enum CodingKeys: CodingKey { case jobs, next_cursor }
    }

    struct DryRun: Encodable {
        /// `queue_multiple_of_batch`: for the methods with a queue only.
        struct Checks: Encodable { var valid: Bool; var queue_multiple_of_batch: Bool? }
        struct Estimate: Encodable { var memory_bytes: Int; var memory: MemoryEstimate; var learning_rate: Double }
        var spec: JobSpec, checks: Checks, estimate: Estimate
    }

    struct MetricsPage: Encodable {
        var job_id: String, next_after_step: Int, total_points: Int
        var points: [MetricPoint]
    }

    /// A job as JSON (the cache above keeps one per job until the store changes).
    func jobJSON(_ j: JobRecord) -> [UInt8] { DaemonJSON.bytes(view(j)) }

    /// A job's spec, parsed once per job (specs never change). Parsed as a submission is, so a
    /// spec stored before a field existed gets that field's preset value.
    func spec(_ j: JobRecord) -> JobSpec? {
        if let s = specCache.withLock({ $0[j.id] }) { return s }
        guard let s = (try? JobSpec.parse(Data(j.spec.utf8))) ?? (try? JSONDecoder().decode(JobSpec.self, from: Data(j.spec.utf8)))
        else { return nil }
        specCache.withLock { cache in
            if cache.count >= 4096 { cache.removeAll() }
            cache[j.id] = s
        }
        return s
    }

    func jobResponse(_ j: JobRecord, status: HTTPStatus = .ok, headers: HTTPHeaders = HTTPHeaders()) -> HTTPResponse {
        var h = headers
        h.set("Content-Type", "application/json")
        return HTTPResponse(status: status, headers: h, body: .bytes(jobJSON(j) + [0x0a]))
    }

    func view(_ j: JobRecord) -> JobView {
        let base = "/v1/jobs/\(j.id)"
        let spec = j.kind == .train ? spec(j) : nil
        let evaluation = j.kind == .train ? nil : try? JSONDecoder().decode(EvaluationSpec.self, from: Data(j.spec.utf8))
        let result = j.result.flatMap { try? JSONDecoder().decode(EvaluationResult.self, from: Data($0.utf8)) }
        var links = ["self": base, "metrics": base + "/metrics", "events": base + "/events", "logs": base + "/logs"]
        if j.kind == .train {
            links["checkpoints"] = base + "/checkpoints"
            links["loss_svg"] = base + "/loss.svg"
            links["evaluations"] = base + "/evaluations"
        } else if let parent = j.parentId {
            links["parent"] = "/v1/jobs/\(parent)"
        }
        if let artifact = result?.artifact { links["artifact"] = base + "/artifacts/" + artifact }
        return JobView(id: j.id, name: j.name, state: j.state, priority: j.priority, kind: j.kind, parent_id: j.parentId, result: result,
                       created_at: j.createdAt, started_at: j.startedAt,
                       finished_at: j.finishedAt, failure_reason: j.failureReason, reason: j.reason,
                       progress: .init(epoch: j.epoch, step: j.step, total_steps: j.totalSteps, images_per_second: j.imagesPerSecond, eta_seconds: j.etaSeconds),
                       last_loss: j.lastLoss, best_knn_top1: j.bestKnn, restarts: j.restarts, precision: spec?.precision ?? evaluation?.precision,
                       spec: spec, evaluation: evaluation, links: links)
    }

    // MARK: - Metrics, events, SVG

    func metrics(_ j: JobRecord, _ req: HTTPRequest) throws -> HTTPResponse {
        let q = req.query
        let after = Int(q["after_step"] ?? "-1") ?? -2
        let maxPoints = Int(q["max_points"] ?? "1000") ?? -1
        guard after >= -1, maxPoints >= 1 && maxPoints <= 100_000 else {
            throw JobError(.invalid, "after_step must be an integer >= -1 and max_points between 1 and 100000")
        }
        let format = q["format"] ?? "json"
        guard format == "json" || format == "csv" else { throw JobError(.invalid, "format must be json or csv") }
        let all = try store.metrics(j.id, afterStep: after)
        let records = Downsample.evenly(all, max: maxPoints)
        let points = records.compactMap { try? JSONDecoder().decode(MetricPoint.self, from: Data($0.json.utf8)) }
        let cursor = all.last?.step ?? max(after, -1)
        if format == "csv" {
            let columns: [(String, (MetricPoint) -> String?)] = [
                ("kind", { $0.kind.rawValue }), ("step", { String($0.step) }), ("epoch", { String($0.epoch) }),
                ("loss", { $0.loss.map { "\($0)" } }), ("lr", { $0.lr.map { "\($0)" } }),
                ("images_per_second", { $0.images_per_second.map { "\($0)" } }), ("data_wait_share", { $0.data_wait_share.map { "\($0)" } }),
                ("instance_accuracy", { $0.instance_accuracy.map { "\($0)" } }), ("feature_std", { $0.feature_std.map { "\($0)" } }),
                ("loss_at_chance", { $0.loss_at_chance.map { "\($0)" } }), ("knn_top1", { $0.knn_top1.map { "\($0)" } }),
                ("precision", { $0.precision?.rawValue }),
                ("allreduce_bytes", { $0.allreduce_bytes.map { "\($0)" } }), ("allreduce_seconds", { $0.allreduce_seconds.map { "\($0)" } }),
                ("data_errors", { $0.data_errors.map { "\($0)" } }),
            ]
            var text = columns.map(\.0).joined(separator: ",") + "\n"
            for p in points { text += columns.map { $0.1(p) ?? "" }.joined(separator: ",") + "\n" }
            return HTTPResponse(status: .ok, headers: HTTPHeaders([("Content-Type", "text/csv"), ("X-Next-After-Step", String(cursor))]),
                                body: .bytes(Array(text.utf8)))
        }
        return .json(MetricsPage(job_id: j.id, next_after_step: cursor, total_points: all.count, points: points))
    }

    func events(_ j: JobRecord, _ req: HTTPRequest) throws -> HTTPResponse {
        var ms = 0
        if let t = req.query["interval_ms"] {
            guard let n = Int(t), (0...60_000).contains(n) else { throw JobError(.invalid, "interval_ms must be an integer between 0 and 60000") }
            ms = n
        }
        let interval = Double(ms) / 1000
        let scheduler = self.scheduler
        let id = j.id
        let initial = DaemonJSON.string(InitialState(state: j.state, step: j.step, epoch: j.epoch))
        return ServerSentEvents.response { sse in
            let queue = EventQueue()
            let token = scheduler.subscribe(id) { queue.push($0) }
            defer { scheduler.unsubscribe(id, token) }
            guard sse.send(event: JobStreamEvent.Name.state.rawValue, data: initial) else { return }
            if scheduler.areStreamsClosed {
                sse.send(event: JobStreamEvent.shutdown.name.rawValue, data: JobStreamEvent.shutdown.json)
                return
            }
            // A finished job has nothing more to say.
            if let current = try? scheduler.job(id), current.state.isTerminal { return }
            let clock = { ProcessInfo.processInfo.systemUptime }
            var pacer = EventPacer(interval: interval, now: clock())
            while !sse.isClosed {
                let action: EventPacer.Action
                if let e = queue.pop(timeout: pacer.wait(now: clock())) {
                    action = pacer.received(e, now: clock())
                } else {
                    action = pacer.tick(now: clock())
                }
                switch action {
                case .wait:
                    continue
                case .heartbeat:
                    guard sse.heartbeat() else { return }
                case .write(let events):
                    guard sse.send(events.map { SSEWriter.Event(event: $0.name.rawValue, data: $0.json) }) else { return }
                    // The daemon is stopping, or the job ended: the stream ends with that event.
                    if events.contains(where: { $0.name == .shutdown || $0.state?.isTerminal == true }) { return }
                }
            }
        }
    }

    struct InitialState: Encodable { var state: JobState; var step: Int; var epoch: Int }

    func lossSVG(_ j: JobRecord) throws -> HTTPResponse {
        let points = try store.metrics(j.id).compactMap { try? JSONDecoder().decode(MetricPoint.self, from: Data($0.json.utf8)) }
        return HTTPResponse(contentType: "image/svg+xml", text: LossChart.svg(title: j.name, points: Downsample.evenly(points, max: 2000)))
    }

    // MARK: - Checkpoints

    struct CheckpointView: Encodable { var name: String, epoch: Int, step: Int, bytes: Int64, sha256: String, created_at: Date, knn_top1: Double?, url: String }

    func checkpoints(_ j: JobRecord) throws -> HTTPResponse {
        let list = try store.checkpoints(j.id).map {
            CheckpointView(name: $0.name, epoch: $0.epoch, step: $0.step, bytes: $0.bytes, sha256: $0.sha256, created_at: $0.createdAt,
                           knn_top1: $0.knnTop1, url: "/v1/jobs/\(j.id)/checkpoints/\($0.name)")
        }
        return .json(["checkpoints": list])
    }

    func download(_ j: JobRecord, _ req: HTTPRequest) throws -> HTTPResponse {
        let all = try store.checkpoints(j.id)
        let name = req.pathParameters["name"]!
        guard let c = name == "latest" ? all.last : all.first(where: { $0.name == name }) else {
            throw JobError(.notFound, "no checkpoint \(name) for job \(j.id)")
        }
        let path = scheduler.settings.jobDirectory(j.id).appendingPathComponent("checkpoints/\(c.name)")
        let disposition = HTTPHeaders([("Content-Disposition", "attachment; filename=\"\(c.name)\"")])
        if let format = req.query["format"], format != "encoder" {
            throw JobError(.invalid, "format must be encoder (or absent for the full checkpoint)")
        }
        if req.query["format"] == "encoder" {
            let file = try SafeTensorsFile.read(from: path)
            let info = try Checkpoint.info(of: file)
            let spec = info.spec
            let (mean, std) = try normalization(spec)
            let exported = try Checkpoint.exportEncoder(file, mean: mean, std: std).encoded()
            let name = c.name.replacingOccurrences(of: ".safetensors", with: "-encoder.safetensors")
            return HTTPResponse(status: .ok, headers: HTTPHeaders([("Content-Type", "application/octet-stream"),
                                                                   ("Content-Disposition", "attachment; filename=\"\(name)\""),
                                                                   ("ETag", "\"\(SHA256.hex(exported))\"")]), body: .bytes(Array(exported)))
        }
        return FileResponder.respond(path: path.path, request: req.head, etag: c.sha256, extraHeaders: disposition)
    }

    func normalization(_ spec: JobSpec) throws -> ([Float], [Float]) {
        if let m = spec.augment.mean, let s = spec.augment.std { return (m, s) }
        let train = try DataSources.load(spec.data, roots: scheduler.settings.dataRoots, size: spec.augment.size, allowAbsolute: false,
                                         channels: spec.model.in_channels)
        let stats = train.channelStatistics()
        return (spec.augment.mean ?? stats.mean.map { Float($0) }, spec.augment.std ?? stats.std.map { Float(max($0, 1e-6)) })
    }

    // MARK: - Info and Prometheus

    /// What lies under the data roots (see `DataSources.discover`).
    func datasets() -> HTTPResponse {
        .json(DatasetList(roots: scheduler.settings.dataRoots, datasets: DataSources.discover(roots: scheduler.settings.dataRoots)))
    }

    struct DatasetList: Encodable {
        var roots: [String]
        var datasets: [DatasetReport]
    }

    func info() -> HTTPResponse {
        .json(Info(version: Self.version, threads: scheduler.settings.threads, max_running: scheduler.settings.maxRunning,
                   kernel_isa: Runtime.dnnlISA, openblas_core: Runtime.openBLASCore, data_roots: scheduler.settings.dataRoots,
                   uptime_seconds: Date().timeIntervalSince(scheduler.started), api_cpu_share: budget?.share, bf16: Runtime.bf16,
                   mpi: scheduler.settings.mpi.map { m in
                       MPIInfo(hostfile: m.hostfile, mpiexec: m.mpiexec, hosts: m.hosts, slots_total: m.hosts.reduce(0) { $0 + $1.slots },
                               slots_free: scheduler.mpiSlotsFree ?? 0)
                   }))
    }

    struct MPIInfo: Encodable {
        var hostfile: String, mpiexec: String, hosts: [HostSlots], slots_total: Int, slots_free: Int
    }

    struct Info: Encodable {
        var version: String, threads: Int, max_running: Int, kernel_isa: String, openblas_core: String, data_roots: [String], uptime_seconds: Double
        var api_cpu_share: Double?
        var bf16: Runtime.BF16Support
        var mpi: MPIInfo?
        func encode(to encoder: any Encoder) throws {   // api_cpu_share as null when there is no limit
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(version, forKey: .version); try c.encode(threads, forKey: .threads); try c.encode(max_running, forKey: .max_running)
            try c.encode(kernel_isa, forKey: .kernel_isa); try c.encode(openblas_core, forKey: .openblas_core)
            try c.encode(data_roots, forKey: .data_roots); try c.encode(uptime_seconds, forKey: .uptime_seconds)
            try c.encode(api_cpu_share, forKey: .api_cpu_share); try c.encode(bf16, forKey: .bf16); try c.encode(mpi, forKey: .mpi)
        }
        enum CodingKeys: CodingKey { case version, threads, max_running, kernel_isa, openblas_core, data_roots, uptime_seconds, api_cpu_share, bf16, mpi }
    }

    func prometheus() -> HTTPResponse {
        var out = "# HELP mocod_jobs Jobs by state.\n# TYPE mocod_jobs gauge\n"
        var counts = Dictionary(uniqueKeysWithValues: JobState.allCases.map { ($0, (try? store.count(by: $0)) ?? 0) })
        if scheduler.hasPendingTransitions {   // decided ends not yet stored count in their new state
            for j in (try? store.jobs(state: .running, limit: 10_000)) ?? [] {
                let now = scheduler.current(j).state
                if now != .running { counts[.running, default: 0] -= 1; counts[now, default: 0] += 1 }
            }
        }
        for s in JobState.allCases { out += "mocod_jobs{state=\"\(s.rawValue)\"} \(counts[s] ?? 0)\n" }
        out += "# HELP mocod_degraded Whether the daemon is degraded (see /healthz for the reason).\n# TYPE mocod_degraded gauge\n"
        out += "mocod_degraded \(scheduler.degradedReason == nil ? 0 : 1)\n"
        out += "# HELP mocod_training_steps_total Training steps run since the daemon started.\n# TYPE mocod_training_steps_total counter\n"
        out += "mocod_training_steps_total \(scheduler.stepsTotal)\n"
        let ips = ((try? store.jobs(state: .running, limit: 100)) ?? []).map(scheduler.current).filter { $0.state == .running }
            .compactMap(\.imagesPerSecond).reduce(0, +)
        out += "# HELP mocod_images_per_second Training throughput of running jobs.\n# TYPE mocod_images_per_second gauge\nmocod_images_per_second \(ips)\n"
        if let budget {
            let w = budget.waited
            out += "# HELP mocod_api_cpu_budget_limiting Whether request handling is held to its CPU budget (a job is training).\n# TYPE mocod_api_cpu_budget_limiting gauge\n"
            out += "mocod_api_cpu_budget_limiting \(budget.isLimited ? 1 : 0)\n"
            out += "# HELP mocod_api_cpu_budget_waits_total Requests that waited for the CPU budget.\n# TYPE mocod_api_cpu_budget_waits_total counter\n"
            out += "mocod_api_cpu_budget_waits_total \(w.requests)\n"
            out += "# HELP mocod_api_cpu_budget_wait_seconds_total Time requests waited for the CPU budget.\n# TYPE mocod_api_cpu_budget_wait_seconds_total counter\n"
            out += "mocod_api_cpu_budget_wait_seconds_total \(w.seconds)\n"
        }
        if let server = server.withLock({ $0 }) {
            out += "# HELP mocod_http_connections_reclaimed_total Idle connections (no request under way) closed at the connection cap to admit new clients.\n"
            out += "# TYPE mocod_http_connections_reclaimed_total counter\nmocod_http_connections_reclaimed_total \(server.reclaimedCount)\n"
        }
        out += stats.withLock { $0 }.prometheus()
        return HTTPResponse(contentType: "text/plain; version=0.0.4", text: out)
    }
}

/// Request counts and a latency histogram per route, in Prometheus' text format.
struct HTTPStats: Sendable {
    static let buckets: [Double] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5]
    var counts: [String: Int] = [:]
    var histogram: [String: [Int]] = [:]
    var sums: [String: Double] = [:]

    /// One request's labels, built before the lock is taken.
    struct Sample: Sendable {
        var counter: String, route: String, seconds: Double
        init(route: String, method: String, status: Int, seconds: Double) {
            counter = "route=\"\(route)\",method=\"\(method)\",status=\"\(status)\""
            self.route = "route=\"\(route)\""
            self.seconds = seconds
        }
    }

    mutating func record(_ s: Sample) {
        counts[s.counter, default: 0] += 1
        histogram[s.route, default: Array(repeating: 0, count: Self.buckets.count + 1)].withUnsafeMutableBufferPointer { h in
            for (i, b) in Self.buckets.enumerated() where s.seconds <= b { h[i] += 1 }
            h[Self.buckets.count] += 1
        }
        sums[s.route, default: 0] += s.seconds
    }

    func prometheus() -> String {
        var out = "# HELP mocod_http_requests_total HTTP requests by route, method and status.\n# TYPE mocod_http_requests_total counter\n"
        for (labels, n) in counts.sorted(by: { $0.key < $1.key }) { out += "mocod_http_requests_total{\(labels)} \(n)\n" }
        out += "# HELP mocod_http_request_duration_seconds Request latency.\n# TYPE mocod_http_request_duration_seconds histogram\n"
        for (labels, h) in histogram.sorted(by: { $0.key < $1.key }) {
            for (i, b) in Self.buckets.enumerated() { out += "mocod_http_request_duration_seconds_bucket{\(labels),le=\"\(b)\"} \(h[i])\n" }
            out += "mocod_http_request_duration_seconds_bucket{\(labels),le=\"+Inf\"} \(h[Self.buckets.count])\n"
            out += "mocod_http_request_duration_seconds_sum{\(labels)} \(sums[labels] ?? 0)\n"
            out += "mocod_http_request_duration_seconds_count{\(labels)} \(h[Self.buckets.count])\n"
        }
        return out
    }
}

/// A value behind an `NSLock` (a futex that does not spin).
final class Locked<Value>: @unchecked Sendable {
    /// Safe to share: `value` is only touched with `lock` held.
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock(); defer { lock.unlock() }
        return try body(&value)
    }
}

/// Equal-length byte strings compared without an early exit.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var diff = UInt8(a.count == b.count ? 0 : 1)
    for i in 0..<max(a.count, b.count) { diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0) }
    return diff == 0
}

/// A blocking queue between the scheduler's publisher and one SSE stream.
final class EventQueue: @unchecked Sendable {
    /// Safe to share: `items` is guarded by `cond`.
    private let cond = NSCondition()
    private var items: [JobStreamEvent] = []
    func push(_ e: JobStreamEvent) { cond.lock(); if items.count < 10_000 { items.append(e) }; cond.signal(); cond.unlock() }
    func pop(timeout: Double) -> JobStreamEvent? {
        cond.lock(); defer { cond.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while items.isEmpty { if !cond.wait(until: deadline) { return nil } }
        return items.removeFirst()
    }
}

/// Evenly spaced picks that always keep the last element.
enum Downsample {
    static func evenly<T>(_ a: [T], max n: Int) -> [T] {
        guard a.count > n, n >= 1 else { return a }
        if n == 1 { return [a[a.count - 1]] }
        return (0..<n).map { a[Int((Double($0) * Double(a.count - 1) / Double(n - 1)).rounded())] }
    }
}
