@testable import Daemon
import Foundation
import HTTP
import MoCo
import Testing

/// The dashboard's files and the API papercuts of issue 15: the chart, job reasons, the job log.
@Suite struct LossChartTests {
    @Test func niceTicksCoverTheRange() {
        #expect(LossChart.ticks(0, 2340, count: 6) == [0, 500, 1000, 1500, 2000, 2500])
        #expect(LossChart.ticks(4.9, 8.3, count: 5) == [4, 5, 6, 7, 8, 9])
        #expect(LossChart.ticks(0, 3, count: 6, minSpacing: 1) == [0, 1, 2, 3])
        let fine = LossChart.ticks(5.02, 5.31, count: 5)
        #expect(fine.first! <= 5.02 && fine.last! >= 5.31 && fine.count >= 4 && fine.count <= 8, "\(fine)")
        #expect(LossChart.label(5.05, spacing: 0.05) == "5.05" && LossChart.label(2000, spacing: 500) == "2000")
    }

    @Test func smoothingFollowsTheCurveFromItsFirstValue() {
        let raw: [Double] = (0..<1000).map { (i: Int) -> Double in
            let jitter: Double = i % 2 == 0 ? 0.3 : -0.3
            return 8 - Double(i) * 0.004 + jitter
        }
        let s = LossChart.smoothed(raw)
        #expect(s.count == raw.count && s[0] == raw[0])
        let rawJitter = zip(raw.dropFirst(), raw).map { abs($0 - $1) }.reduce(0, +)
        let smoothJitter = zip(s.dropFirst(), s).map { abs($0 - $1) }.reduce(0, +)
        #expect(smoothJitter < rawJitter / 5)
        #expect(abs(s.last! - (8 - 999 * 0.004)) < 0.2)
    }

    /// A metric point as the worker writes it (JSON: the type has no public memberwise init).
    static func point(_ step: Int, loss: Double? = nil, knn: Double? = nil, chance: Double? = nil) -> MetricPoint {
        var json: [String: Any] = ["kind": knn == nil ? "step" : "eval", "step": step, "epoch": 1 + step / 10, "total_steps": 40, "time": 0]
        if let loss { json["loss"] = loss }
        if let knn { json["knn_top1"] = knn }
        if let chance { json["loss_at_chance"] = chance }
        return try! JSONDecoder().decode(MetricPoint.self, from: JSONSerialization.data(withJSONObject: json))
    }

    @Test func theSVGHasAxesALegendTheChanceLineAndBothCurves() throws {
        let chance = log(4097.0)
        var points = (1...40).map { Self.point($0, loss: chance - Double($0) * 0.05, chance: chance) }
        points += [Self.point(10, knn: 41.5), Self.point(20, knn: 55.25)]
        let svg = LossChart.svg(title: "fmnist <v2>", points: points)
        #expect(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>\n"))
        #expect(svg.contains("width=\"720\" height=\"360\""))
        #expect(svg.contains("fmnist &lt;v2&gt;"))                      // the title is escaped
        for label in ["loss, smoothed", "at chance (8.32)", "kNN top-1 % (right)", ">step<"] { #expect(svg.contains(label), "\(label)") }
        #expect(svg.components(separatedBy: "class=\"chance\"").count == 2)
        #expect(svg.components(separatedBy: "class=\"raw\"").count == 2 && svg.components(separatedBy: "class=\"smoothed\"").count == 2)
        // Every loss point is on both curves; each eval is a point with its value.
        let raw = try #require(svg.range(of: #"class="raw"[^>]*points="([^"]*)""#, options: .regularExpression))
        #expect(svg[raw].split(separator: " ").count >= 40)
        #expect(svg.contains("epoch 2: 41.50%") && svg.contains("epoch 3: 55.25%"))
        // Ticks with labels on the step axis and both value axes.
        for label in [">0<", ">10<", ">20<", ">30<", ">40<", ">100<", ">60<"] { #expect(svg.contains(label), "\(label)") }
        // Tags balance (a cheap well-formedness check: no element is left open).
        let opens = svg.components(separatedBy: "<g").count - 1, closes = svg.components(separatedBy: "</g>").count - 1
        #expect(opens == closes)
        #expect(LossChart.svg(title: "empty", points: []).contains("no metrics yet"))
    }
}

@Suite struct JobLogTests {
    @Test func tailTakesTheLastLines() {
        let text = "a\nb\nc\n"
        #expect(JobLog.tail(text, lines: 1) == "c\n")
        #expect(JobLog.tail(text, lines: 2) == "b\nc\n")
        #expect(JobLog.tail(text, lines: 3) == text[...] && JobLog.tail(text, lines: 10) == text[...])
        #expect(JobLog.tail("a\nb", lines: 1) == "b")
        #expect(JobLog.tail("", lines: 5) == "" && JobLog.tail(text, lines: 0) == "")
    }
}

@Suite(.serialized) struct DashboardTests {
    /// The page, its script and its style: no token needed, a strict policy, nothing fetched from
    /// anywhere but the daemon, no inline script or style for the policy to refuse.
    @Test func theDashboardIsServedWithAStrictPolicy() throws {
        let d = try LiveDaemon(token: "dash-token-0123456789")
        defer { d.stop() }
        let page = d.request("GET", "/")
        #expect(page.status == 200 && page.headers["content-type"] == "text/html; charset=utf-8")
        let csp = try #require(page.headers["content-security-policy"])
        #expect(csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"))
        #expect(!csp.contains("unsafe") && page.headers["x-content-type-options"] == "nosniff")
        let html = String(decoding: page.body, as: UTF8.self)
        #expect(html.contains(#"<script src="/ui/app.js" defer></script>"#) && html.contains(#"href="/ui/app.css""#))
        #expect(html.contains(#"<meta name="mocod-auth" content="on">"#))   // the page asks for the token before any request
        #expect(html.components(separatedBy: "<script").count == 2 && !html.contains("style=") && !html.contains("<style"))
        for (path, type) in [("/ui/app.js", "text/javascript; charset=utf-8"), ("/ui/app.css", "text/css; charset=utf-8")] {
            let r = d.request("GET", path)
            #expect(r.status == 200 && r.headers["content-type"] == type && r.body.count > 500, "\(path)")
            let text = String(decoding: r.body, as: UTF8.self)
            #expect(!text.contains("http://") && !text.contains("https://") && !text.contains("@import"), "\(path) reaches outside")
            let etag = try #require(r.headers["etag"])
            #expect(d.request("GET", path, headers: ["If-None-Match": etag]).status == 304)
        }
        #expect(!html.contains("http://") && !html.contains("https://"))
        // The API itself still wants the token.
        #expect(d.request("GET", "/v1/jobs").status == 401)
    }

    @Test func presetsForEveryMethod() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        #expect(String(decoding: d.request("GET", "/").body, as: UTF8.self).contains(#"<meta name="mocod-auth" content="off">"#))
        for method in ["moco_v2", "moco_v1", "simclr", "moco_v3"] {
            let r = d.request("GET", "/v1/presets/\(method)")
            #expect(r.status == 200 && r.json["method"] as? String == method, "\(method)")
            // The preset is the spec a submission gets: given a path, it validates.
            var spec = r.json
            spec["data"] = ["format": "npy", "path": "imgs.npy"]
            spec["augment"] = ["size": 8]
            spec["threads"] = 1   // this daemon's budget
            let body = String(decoding: try JSONSerialization.data(withJSONObject: spec), as: UTF8.self)
            let dry = d.request("POST", "/v1/jobs?dry_run=true", body: body)
            #expect(dry.status == 200, "\(method): \(String(decoding: dry.body, as: UTF8.self))")
        }
        let missing = d.request("GET", "/v1/presets/byol")
        #expect(missing.status == 404 && String(decoding: missing.body, as: UTF8.self).contains("moco_v3"))
    }

    /// Every terminal job says why; the log holds every state change from submission on (a job
    /// cancelled before it ran has one) and takes `?tail=N`.
    @Test func terminalJobsHaveAReasonAndALog() throws {
        let d = try LiveDaemon(maxRunning: 1)
        defer { d.stop() }
        let first = try #require(d.request("POST", "/v1/jobs", body: LiveDaemon.spec).json["id"] as? String)
        let second = try #require(d.request("POST", "/v1/jobs", body: LiveDaemon.spec).json["id"] as? String)
        #expect(d.request("GET", "/v1/jobs/\(second)").json["reason"] as? String == "submitted")
        #expect(d.request("POST", "/v1/jobs/\(second)/cancel").status == 202)   // still queued behind the first
        let cancelled = d.waitFor(second, ["cancelled"])
        #expect(cancelled["reason"] as? String == "cancelled by request", "\(cancelled)")
        let log = String(decoding: d.request("GET", "/v1/jobs/\(second)/logs").body, as: UTF8.self)
        let lines = log.split(separator: "\n")
        #expect(lines.count == 2 && lines[0].hasSuffix("state: queued (submitted)") && lines[1].hasSuffix("state: cancelled (cancelled by request)"), "\(log)")
        let tail = String(decoding: d.request("GET", "/v1/jobs/\(second)/logs?tail=1").body, as: UTF8.self)
        #expect(tail == lines[1] + "\n")
        for bad in ["0", "-1", "x", "100001"] { #expect(d.request("GET", "/v1/jobs/\(second)/logs?tail=\(bad)").status == 400, "\(bad)") }
        let done = d.waitFor(first, ["succeeded", "failed"])
        #expect(done["state"] as? String == "succeeded" && (done["reason"] as? String ?? "").isEmpty == false, "\(done)")
        let firstLog = String(decoding: d.request("GET", "/v1/jobs/\(first)/logs").body, as: UTF8.self)
        #expect(firstLog.contains("state: running (scheduled)") && firstLog.contains("state: succeeded ("), "\(firstLog)")
        // A failed job's reason is its failure's.
        let bad = LiveDaemon.spec.replacingOccurrences(of: "imgs.npy", with: "gone.npy")
        try FileManager.default.copyItem(at: d.dir.appendingPathComponent("datasets/imgs.npy"), to: d.dir.appendingPathComponent("datasets/gone.npy"))
        let failing = try #require(d.request("POST", "/v1/jobs", body: bad).json["id"] as? String)
        try FileManager.default.removeItem(at: d.dir.appendingPathComponent("datasets/gone.npy"))
        let failed = d.waitFor(failing, ["failed", "succeeded"])
        #expect(failed["state"] as? String == "failed" && failed["reason"] as? String == failed["failure_reason"] as? String, "\(failed)")
    }
}
