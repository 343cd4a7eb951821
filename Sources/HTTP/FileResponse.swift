import Foundation

/// Byte ranges (RFC 9110 §14) as a pure function of the header and the file size.
public enum ByteRange: Equatable, Sendable {
    /// No usable Range header (absent, malformed, another unit, or several disjoint ranges):
    /// send the whole file.
    case full
    /// One satisfiable range, `first...last` inclusive.
    case partial(first: Int64, last: Int64)
    /// Syntactically valid but no range overlaps the file: 416 with `bytes */size`.
    case unsatisfiable

    public static func parse(_ header: String?, size: Int64) -> ByteRange {
        guard let header else { return .full }
        let h = header.trimmingCharacters(in: .whitespaces)
        guard h.lowercased().hasPrefix("bytes=") else { return .full }
        let specs = h.dropFirst(6).split(separator: ",", omittingEmptySubsequences: false)
        guard !specs.isEmpty, specs.count <= 100 else { return .full }
        var ranges: [(Int64, Int64)] = []
        var sawValid = false
        for raw in specs {
            let spec = raw.trimmingCharacters(in: .whitespaces)
            guard let dash = spec.firstIndex(of: "-") else { return .full }
            let a = spec[spec.startIndex..<dash], b = spec[spec.index(after: dash)...]
            func number(_ s: Substring) -> Int64? {
                guard !s.isEmpty, s.count <= 18, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
                return Int64(s)
            }
            if a.isEmpty {
                guard let n = number(b) else { return .full }
                sawValid = true
                if n > 0 && size > 0 { ranges.append((max(0, size - n), size - 1)) }
            } else {
                guard let first = number(a) else { return .full }
                var last = size - 1
                if !b.isEmpty {
                    guard let l = number(b), l >= first else { return .full }
                    last = min(l, size - 1)
                }
                sawValid = true
                if first < size { ranges.append((first, last)) }
            }
        }
        guard sawValid else { return .full }
        if ranges.isEmpty { return .unsatisfiable }
        // Coalesce overlapping and adjacent ranges; several disjoint ones are answered whole.
        ranges.sort { $0.0 < $1.0 }
        var merged = [ranges[0]]
        for r in ranges.dropFirst() {
            if r.0 <= merged[merged.count - 1].1 + 1 { merged[merged.count - 1].1 = max(merged[merged.count - 1].1, r.1) } else { merged.append(r) }
        }
        return merged.count == 1 ? .partial(first: merged[0].0, last: merged[0].1) : .full
    }
}

/// Serves a file from disk with validators and ranges: `ETag`, `Last-Modified`, `Range` (one
/// range → 206, unsatisfiable → 416), `If-Range`, `If-None-Match` → 304. The body is streamed
/// from disk in bounded chunks by the server.
public enum FileResponder {
    static let httpDate: DateFormatter = {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        return f
    }()

    /// `etag` (without quotes) defaults to one made of the size and modification time.
    public static func respond(path: String, request: HTTPRequestHead, contentType: String = "application/octet-stream",
                               etag: String? = nil, extraHeaders: HTTPHeaders = HTTPHeaders()) -> HTTPResponse {
        guard let attrs = try? FileManager.default.attributesOfItem(atPath: path),
              (attrs[.type] as? FileAttributeType) == .typeRegular,
              let size = (attrs[.size] as? NSNumber)?.int64Value else {
            return .error(.notFound, code: "not_found", message: "file not found")
        }
        let modified = (attrs[.modificationDate] as? Date) ?? Date(timeIntervalSince1970: 0)
        let tag = "\"" + (etag ?? String(format: "%llx-%llx", size, Int64(modified.timeIntervalSince1970 * 1000))) + "\""
        let lastModified = httpDate.string(from: modified)
        var headers = extraHeaders
        headers.set("Content-Type", contentType)
        headers.set("ETag", tag)
        headers.set("Last-Modified", lastModified)
        headers.set("Accept-Ranges", "bytes")

        if let inm = request.headers["If-None-Match"] {
            let candidates = inm.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            if candidates.contains("*") || candidates.contains(where: { weakMatch($0, tag) }) {
                return HTTPResponse(status: .notModified, headers: headers, body: .bytes([]))
            }
        }
        var range = ByteRange.parse(request.headers["Range"], size: size)
        if range != .full, let ifRange = request.headers["If-Range"]?.trimmingCharacters(in: .whitespaces) {
            // Strong comparison for entity tags; an exact date match otherwise.
            let matches = ifRange.hasPrefix("\"") ? ifRange == tag : ifRange == lastModified
            if !matches { range = .full }
        }
        switch range {
        case .full:
            return HTTPResponse(status: .ok, headers: headers, body: .file(path: path, offset: 0, length: size))
        case .partial(let first, let last):
            headers.set("Content-Range", "bytes \(first)-\(last)/\(size)")
            return HTTPResponse(status: .partialContent, headers: headers, body: .file(path: path, offset: first, length: last - first + 1))
        case .unsatisfiable:
            headers.set("Content-Range", "bytes */\(size)")
            headers.set("Content-Type", "application/json")
            var r = HTTPResponse.error(.rangeNotSatisfiable, code: "range_not_satisfiable", message: "no requested range overlaps the \(size)-byte file")
            for (n, v) in headers where n != "Content-Type" { r.headers.set(n, v) }
            return r
        }
    }

    static func weakMatch(_ a: String, _ b: String) -> Bool {
        func opaque(_ s: String) -> String { s.hasPrefix("W/") ? String(s.dropFirst(2)) : s }
        return opaque(a) == opaque(b)
    }
}

/// Server-Sent Events (`text/event-stream`): events and comment heartbeats over a streamed body.
public enum ServerSentEvents {
    /// A streaming response; `produce` writes events until it returns or the client leaves
    /// (`SSEWriter.send` returns false then).
    public static func response(headers: HTTPHeaders = HTTPHeaders(), _ produce: @escaping @Sendable (SSEWriter) -> Void) -> HTTPResponse {
        var h = headers
        h.set("Content-Type", "text/event-stream")
        h.set("Cache-Control", "no-cache")
        return HTTPResponse(status: .ok, headers: h, body: .stream { w in produce(SSEWriter(writer: w)) })
    }
}

public struct SSEWriter: Sendable {
    let writer: StreamWriter

    /// One event: its name (none: `message`), id and data.
    public struct Event: Sendable, Equatable {
        public var event: String?
        public var id: String?
        public var data: String
        public init(event: String? = nil, id: String? = nil, data: String) { self.event = event; self.id = id; self.data = data }

        /// Its text on the wire; data lines are split on newlines as the format requires.
        var text: String {
            var text = ""
            if let event { text += "event: \(event.filter { $0 != "\n" && $0 != "\r" })\n" }
            if let id { text += "id: \(id.filter { $0 != "\n" && $0 != "\r" })\n" }
            for line in data.split(separator: "\n", omittingEmptySubsequences: false) { text += "data: \(line)\n" }
            return text + "\n"
        }
    }

    /// Sends one event.
    @discardableResult
    public func send(event: String? = nil, id: String? = nil, data: String) -> Bool {
        send([Event(event: event, id: id, data: data)])
    }

    /// Sends events together, in one write: a client wakes once for all of them.
    @discardableResult
    public func send(_ events: [Event]) -> Bool {
        guard !events.isEmpty else { return !writer.isClosed }
        return writer.write(Array(events.map(\.text).joined().utf8))
    }

    /// A comment line that keeps proxies and clients from timing out.
    @discardableResult
    public func heartbeat() -> Bool { writer.write(Array(": heartbeat\n\n".utf8)) }

    public var isClosed: Bool { writer.isClosed }
}
