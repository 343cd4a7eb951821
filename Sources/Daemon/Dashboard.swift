import Foundation
import HTTP
import MoCo

/// The web dashboard: `Dashboard/index.html`, `app.js` and `app.css`, embedded in the binary
/// (no build toolchain, no CDN: the users and the machine may be offline). The page holds no
/// data and needs no token; it asks the API for everything, with the token the user gives it.
enum Dashboard {
    struct Asset: Sendable {
        let bytes: [UInt8]
        let contentType: String
        let etag: String
        init(_ bytes: [UInt8], _ contentType: String) {
            self.bytes = bytes
            self.contentType = contentType
            etag = "\"" + SHA256.hex(Data(bytes)).prefix(32) + "\""
        }
    }

    /// The page as served by a daemon without a token, and with one: its `mocod-auth` meta tag
    /// tells the script to ask for the token before its first request (so a first visit makes
    /// no request that is refused).
    static let page = Asset(PackageResources.index_html, "text/html; charset=utf-8")
    static let pageWithAuth = Asset(Array(String(decoding: PackageResources.index_html, as: UTF8.self)
        .replacingOccurrences(of: #"<meta name="mocod-auth" content="off">"#, with: #"<meta name="mocod-auth" content="on">"#).utf8),
        "text/html; charset=utf-8")
    static let script = Asset(PackageResources.app_js, "text/javascript; charset=utf-8")
    static let style = Asset(PackageResources.app_css, "text/css; charset=utf-8")

    /// The paths served without a token, for a daemon with or without one.
    static func paths(authRequired: Bool) -> [String: Asset] {
        ["/": authRequired ? pageWithAuth : page, "/ui/app.js": script, "/ui/app.css": style]
    }

    static func isPublic(_ path: String) -> Bool { paths(authRequired: false)[path] != nil }

    /// Everything from this daemon only; no inline script or style, no frames, no plugins.
    /// (`data:` images: the page's empty favicon, so the browser does not ask for one.)
    static let contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        + "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

    static func respond(_ asset: Asset, _ request: HTTPRequest) -> HTTPResponse {
        var headers = HTTPHeaders([
            ("Content-Type", asset.contentType), ("ETag", asset.etag), ("Cache-Control", "no-cache"),
            ("Content-Security-Policy", contentSecurityPolicy), ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
        ])
        if let tags = request.headers["If-None-Match"], tags.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == asset.etag }) {
            headers.remove("Content-Type")
            return HTTPResponse(status: .notModified, headers: headers)
        }
        return HTTPResponse(status: .ok, headers: headers, body: .bytes(asset.bytes))
    }
}
