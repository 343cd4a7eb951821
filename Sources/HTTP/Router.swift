import Foundation

/// A request as handlers see it: head, complete body, path parameters and a request id.
public struct HTTPRequest: Sendable {
    public var head: HTTPRequestHead
    public var body: [UInt8]
    public var pathParameters: [String: String] = [:]
    public var requestID: String
    /// The matched route's pattern, e.g. `/v1/jobs/{id}` (for metrics).
    public var route: String?

    public init(head: HTTPRequestHead, body: [UInt8] = [], requestID: String = UUID().uuidString) {
        self.head = head; self.body = body; self.requestID = requestID
    }

    public var method: String { head.method }
    public var path: String { head.path }
    public var headers: HTTPHeaders { head.headers }

    /// Query parameters, percent-decoded (`+` as space); the last value wins.
    public var query: [String: String] {
        guard let q = head.query else { return [:] }
        var out: [String: String] = [:]
        for pair in q.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let k = String(kv[0]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(kv[0])
            let v = kv.count > 1 ? (String(kv[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(kv[1])) : ""
            out[k] = v
        }
        return out
    }
}

public typealias Handler = @Sendable (HTTPRequest) -> HTTPResponse

/// Routes by method and path pattern (`/v1/jobs/{id}/checkpoints/{name}`). A path that matches
/// with another method gets 405 and `Allow`; `HEAD` falls back to `GET`.
public struct Router: Sendable {
    struct Route: Sendable {
        let method: String
        let pattern: String
        let segments: [Segment]
        let handler: Handler
    }

    enum Segment: Sendable, Equatable { case literal(String), parameter(String) }

    private var routes: [Route] = []

    public init() {}

    public mutating func add(_ method: String, _ pattern: String, _ handler: @escaping Handler) {
        let segments = pattern.split(separator: "/").map { s -> Segment in
            s.hasPrefix("{") && s.hasSuffix("}") ? .parameter(String(s.dropFirst().dropLast())) : .literal(String(s))
        }
        routes.append(Route(method: method, pattern: pattern, segments: segments, handler: handler))
    }

    /// Every (method, pattern) pair, for documentation checks.
    public var table: [(method: String, pattern: String)] { routes.map { ($0.method, $0.pattern) } }

    public enum Match {
        case found(Handler, parameters: [String: String], pattern: String)
        case methodNotAllowed(allow: [String])
        case notFound
        /// A path segment that no resource can be named by: it decodes to a control character
        /// (NUL included), a `/`, or bytes that are not UTF-8. Refused before any handler runs.
        case invalidPath(String)
    }

    /// Whether a percent-decoded path segment could name something (no control characters,
    /// no `/`); nil when it does not decode at all.
    static func segmentProblem(_ raw: Substring) -> String? {
        guard let decoded = raw.removingPercentEncoding else { return "a path segment is not valid percent-encoded UTF-8" }
        for u in decoded.unicodeScalars where u.value < 0x20 || (0x7f...0x9f).contains(u.value) || u == "/" {
            return u == "/" ? "a path segment must not contain an encoded '/'"
                : "a path segment must not contain control characters (U+\(String(format: "%04X", u.value)))"
        }
        return nil
    }

    public func match(method: String, path: String) -> Match {
        for segment in path.split(separator: "/") where segment.contains("%") {
            if let problem = Self.segmentProblem(segment) { return .invalidPath(problem) }
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        let trimmed = parts.last == "" && parts.count > 1 ? Array(parts.dropLast()) : parts
        var allowed: [String] = []
        for r in routes {
            guard let params = bind(r.segments, trimmed) else { continue }
            if r.method == method || (method == "HEAD" && r.method == "GET" && !routes.contains { $0.method == "HEAD" && $0.pattern == r.pattern }) {
                return .found(r.handler, parameters: params, pattern: r.pattern)
            }
            allowed.append(r.method)
        }
        if allowed.isEmpty { return .notFound }
        if allowed.contains("GET") && !allowed.contains("HEAD") { allowed.append("HEAD") }
        return .methodNotAllowed(allow: Array(Set(allowed)).sorted())
    }

    func bind(_ segments: [Segment], _ parts: [String]) -> [String: String]? {
        let parts = parts == [""] ? [] : parts
        guard segments.count == parts.count else { return nil }
        var params: [String: String] = [:]
        for (s, p) in zip(segments, parts) {
            switch s {
            case .literal(let l): if l != p { return nil }
            case .parameter(let name):
                guard !p.isEmpty, let decoded = p.removingPercentEncoding else { return nil }
                params[name] = decoded
            }
        }
        return params
    }

    /// Dispatches a request (404 and 405 answered with the uniform error body).
    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        handle(request, match(method: request.method, path: request.path))
    }

    /// Dispatches a request that `match` has already routed.
    public func handle(_ request: HTTPRequest, _ matched: Match) -> HTTPResponse {
        switch matched {
        case .found(let handler, let params, let pattern):
            var r = request
            r.pathParameters = params
            r.route = pattern
            return handler(r)
        case .methodNotAllowed(let allow):
            return .error(.methodNotAllowed, code: "method_not_allowed", message: "\(request.method) is not allowed on \(request.path)",
                          headers: HTTPHeaders([("Allow", allow.joined(separator: ", "))]))
        case .notFound:
            return .error(.notFound, code: "not_found", message: "no route for \(request.path)")
        case .invalidPath(let problem):
            return .error(.badRequest, code: "invalid_path", message: problem)
        }
    }
}
