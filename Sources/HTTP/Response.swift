import Foundation

/// A response: status, headers and a body that is bytes, a file region or a stream.
public struct HTTPResponse: Sendable {
    public enum Body: Sendable {
        case bytes([UInt8])
        /// `length` bytes of the file at `path` from `offset`, read from disk in bounded chunks.
        case file(path: String, offset: Int64, length: Int64)
        /// Chunked transfer; the writer calls back with chunks until it returns (SSE and the like).
        case stream(@Sendable (StreamWriter) -> Void)
    }

    public var status: HTTPStatus
    public var headers: HTTPHeaders
    public var body: Body

    public init(status: HTTPStatus = .ok, headers: HTTPHeaders = HTTPHeaders(), body: Body = .bytes([])) {
        self.status = status; self.headers = headers; self.body = body
    }

    public init(status: HTTPStatus = .ok, contentType: String, text: String) {
        self.init(status: status, headers: HTTPHeaders([("Content-Type", contentType)]), body: .bytes(Array(text.utf8)))
    }

    /// A JSON response from any `Encodable`.
    public static func json<T: Encodable>(_ value: T, status: HTTPStatus = .ok, headers: HTTPHeaders = HTTPHeaders()) -> HTTPResponse {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        enc.dateEncodingStrategy = .iso8601
        var h = headers
        h.set("Content-Type", "application/json")
        let data = (try? enc.encode(value)) ?? Data("{}".utf8)
        return HTTPResponse(status: status, headers: h, body: .bytes(Array(data) + [0x0a]))
    }

    /// The uniform error body: `{"error": {"code", "message", "details"}}`.
    public static func error(_ status: HTTPStatus, code: String, message: String, details: [ErrorDetail] = [],
                             headers: HTTPHeaders = HTTPHeaders()) -> HTTPResponse {
        json(ErrorBody(error: .init(code: code, message: message, details: details)), status: status, headers: headers)
    }

    public var bodyLength: Int64? {
        switch body {
        case .bytes(let b): Int64(b.count)
        case .file(_, _, let length): length
        case .stream: nil
        }
    }
}

public struct ErrorDetail: Codable, Sendable, Equatable {
    public var field: String
    public var problem: String
    public init(field: String, problem: String) { self.field = field; self.problem = problem }
}

public struct ErrorBody: Codable, Sendable, Equatable {
    public struct Inner: Codable, Sendable, Equatable {
        public var code: String
        public var message: String
        public var details: [ErrorDetail]
    }
    public var error: Inner
}

/// Writes the chunks of a streamed response; `write` returns false once the client is gone.
public protocol StreamWriter: Sendable {
    @discardableResult func write(_ bytes: [UInt8]) -> Bool
    var isClosed: Bool { get }
}

/// Response heads and chunk framing as bytes. Refuses header names that are not tokens and
/// values holding CR, LF or NUL, so no caller-supplied text can split a response.
public enum ResponseSerializer {
    public struct InvalidHeader: Error, CustomStringConvertible, Sendable {
        public let name: String
        public var description: String { "invalid header \(name)" }
    }

    public static func head(_ status: HTTPStatus, _ headers: HTTPHeaders) throws(InvalidHeader) -> [UInt8] {
        var out = Array("HTTP/1.1 \(status.code) \(status.reason)\r\n".utf8)
        for (name, value) in headers {
            guard !name.isEmpty, name.utf8.allSatisfy(isTokenChar) else { throw InvalidHeader(name: name) }
            guard !value.utf8.contains(where: { $0 == cr || $0 == lf || $0 == 0 }) else { throw InvalidHeader(name: name) }
            out += Array(name.utf8) + [0x3a, sp] + Array(value.utf8) + [cr, lf]
        }
        out += [cr, lf]
        return out
    }

    public static func chunk(_ bytes: [UInt8]) -> [UInt8] {
        guard !bytes.isEmpty else { return [] }
        return Array(String(bytes.count, radix: 16).utf8) + [cr, lf] + bytes + [cr, lf]
    }

    public static let lastChunk: [UInt8] = Array("0\r\n\r\n".utf8)
}
