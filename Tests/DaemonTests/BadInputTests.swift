import Foundation
import Testing

/// Bad input never gets past the API. A seeded generator derives well over 1,000 absurd or mutated
/// job specs from a valid one (out-of-range numbers, NaN/Infinity literals, wrong types, 10,000-deep
/// nesting, 1 MiB strings, NULs and control characters, duplicate keys, trailing commas, unknown
/// fields, non-JSON, invalid UTF-8, random byte mutations); each is POSTed to the real mocod binary
/// with and without `?dry_run=true`. Every answer must be a 4xx within 2 s, no job may be created,
/// and the daemon must be alive at the end.
@Suite(.serialized) struct BadInputTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    /// The daemon under test: .build/debug/mocod, or the binary BADINPUT_MOCOD names (to check another build).
    static let exe = ProcessInfo.processInfo.environment["BADINPUT_MOCOD"].map { URL(fileURLWithPath: $0) }
        ?? root.appendingPathComponent(".build/debug/mocod")
    /// The generator's seed, printed in every failure message.
    static let seed: UInt64 = 0x6D6F_636F_6261_6421
    static var seedText: String { "seed 0x" + String(seed, radix: 16) }

    /// The generator alone (no daemon): deterministic, large, every category present, no case is
    /// a valid base, and every random mutation is invalid JSON under strict RFC 8259.
    @Test func generatorIsDeterministicAndCoversEveryCategory() {
        let a = BadInput.generate(seed: Self.seed)
        let b = BadInput.generate(seed: Self.seed)
        #expect(a.map(\.body) == b.map(\.body), "the generator is not deterministic (\(Self.seedText))")
        #expect(a.count >= 1000, "only \(a.count) cases (\(Self.seedText))")
        #expect(Set(a.map(\.body)).count == a.count, "duplicate bodies")
        let counts = Dictionary(grouping: a, by: \.category).mapValues(\.count)
        for c in BadInput.Category.allCases { #expect((counts[c] ?? 0) > 0, "no case of category \(c.rawValue)") }
        let valid = Set(BadInput.validBases.map(\.spec.bytes))
        #expect(!a.contains { valid.contains($0.body) }, "a valid base spec is among the bad ones")
        for c in a where c.category == .mutations || c.category == .nonJSON && c.note.hasPrefix("prefix") {
            #expect(BadInput.StrictJSON.verdict(c.body) == .invalid, "\(c.note) parses as strict JSON: \(BadInput.excerpt(c.body))")
        }
        // The base the issue names, byte for byte.
        #expect(String(decoding: BadInput.base.bytes, as: UTF8.self) == #"{"name":"fz","data":{"format":"npy","path":"imgs.npy"},"model":{"arch":"resnet18","stem":"cifar","width":4,"in_channels":1,"dim":16},"moco":{"queue":64,"bn_splits":1},"augment":{"size":16},"optim":{"batch_size":32,"epochs":1},"threads":1}"#)
    }

    @Test func everyBadSpecIsRejectedQuickly() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.exe.path), "build mocod first (swift build)")
        let cases = BadInput.generate(seed: Self.seed)
        try #require(cases.count >= 1000, "only \(cases.count) cases (\(Self.seedText))")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("badinput-\(UUID())")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("datasets"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try LiveDaemon.writeImages(to: dir.appendingPathComponent("datasets/imgs.npy"), count: 64)
        let daemon = try BadInput.Daemon(exe: Self.exe, dir: dir)
        defer { daemon.stop() }
        try #require(daemon.waitHealthy(), "mocod did not answer /healthz within 15 s; its stderr: \(daemon.stderrTail())")

        // Sanity: the daemon answers and every base the cases derive from is a valid spec.
        for (label, spec) in BadInput.validBases {
            let a = BadInput.HTTP.request(port: daemon.port, "POST", "/v1/jobs?dry_run=true", body: spec.bytes)
            try #require(a.status == 200, "the valid \(label) spec's dry run answered \(a.describe): \(BadInput.excerpt(spec.bytes, width: 400))")
        }

        struct Offence { let index: Int; let c: BadInput.Case; let target: String; let answer: BadInput.Answer }
        var offences: [Offence] = []
        var deaths: [String] = []
        var requests = 0, maxLatency = 0.0
        var statuses: [Int: Int] = [:]
        var perCategory: [BadInput.Category: (requests: Int, bad: Int, worst: Double)] = [:]
        let started = Date()
        var stoppedEarly: String?
        caseLoop: for (i, c) in cases.enumerated() {
            for target in ["/v1/jobs?dry_run=true", "/v1/jobs"] {
                let a = BadInput.HTTP.request(port: daemon.port, "POST", target, body: c.body)
                requests += 1
                statuses[a.status, default: 0] += 1
                maxLatency = max(maxLatency, a.seconds)
                var tally = perCategory[c.category] ?? (0, 0, 0)
                tally.requests += 1
                tally.worst = max(tally.worst, a.seconds)
                if !(400..<500).contains(a.status) || a.seconds >= 2 {
                    tally.bad += 1
                    offences.append(Offence(index: i, c: c, target: target, answer: a))
                    // No HTTP answer may mean the daemon died (wait up to 1 s to see); an answer means it is alive.
                    if a.status > 0 ? !daemon.isRunning : daemon.died() {
                        deaths.append("daemon died after case \(i) (\(c.category.rawValue): \(c.note); POST \(target); body \(BadInput.excerpt(c.body, focus: BadInput.focus(c.body)))): "
                                      + "\(daemon.exitDescription); its stderr: \(daemon.crashReport())")
                        // Restart it (same data directory and port) to keep testing the other cases.
                        guard deaths.count < 10, (try? daemon.start()) != nil, daemon.waitHealthy() else {
                            stoppedEarly = "stopped after case \(i) of \(cases.count): the daemon died \(deaths.count) time(s) and was not restarted again"
                            perCategory[c.category] = tally
                            break caseLoop
                        }
                    }
                }
                perCategory[c.category] = tally
            }
            if Date().timeIntervalSince(started) > 150 {
                stoppedEarly = "stopped after case \(i) of \(cases.count): over 150 s"
                break
            }
        }
        let elapsed = Date().timeIntervalSince(started)

        // The summary: every category's size, requests, non-4xx/slow answers and worst latency.
        let counts = Dictionary(grouping: cases, by: \.category).mapValues(\.count)
        var summary = "bad-input suite (\(Self.seedText)): \(cases.count) cases, \(requests) requests in \(String(format: "%.1f", elapsed)) s, "
            + "max latency \(String(format: "%.0f", maxLatency * 1000)) ms, \(daemon.starts - 1) restart(s); answers: "
            + statuses.sorted { $0.key < $1.key }.map { "\($0.key > 0 ? String($0.key) : BadInput.Answer(status: $0.key, seconds: 0).kind) ×\($0.value)" }.joined(separator: ", ") + "\n"
        for cat in BadInput.Category.allCases {
            let t = perCategory[cat] ?? (0, 0, 0)
            summary += "  \(cat.rawValue.padding(toLength: 26, withPad: " ", startingAt: 0)) \(String(counts[cat] ?? 0).leftPad(5)) cases  "
                + "\(String(t.requests).leftPad(5)) requests  \(String(t.bad).leftPad(4)) not 4xx/slow  worst \(String(format: "%6.1f", t.worst * 1000)) ms\n"
        }
        print(summary)

        if let stoppedEarly { Issue.record("\(stoppedEarly) (\(Self.seedText))") }
        let deathCount = deaths.count, deathReport = deaths.prefix(10).joined(separator: "\n")
        #expect(deathCount == 0, "\(deathCount) daemon death(s) (\(Self.seedText)):\n\(deathReport)")
        if !offences.isEmpty {
            var byCategory: [String: Int] = [:]
            for o in offences { byCategory["\(o.c.category.rawValue) → \(o.answer.kind)", default: 0] += 1 }
            // The first offences, at most 3 per category (so every failing category shows), 12 in all.
            var shown: [BadInput.Category: Int] = [:]
            let sample = offences.filter { o in shown[o.c.category, default: 0] += 1; return shown[o.c.category]! <= 3 }.prefix(12)
            let first = sample.map { o in
                "#\(o.index) [\(o.c.category.rawValue)] \(o.c.note) | POST \(o.target) → \(o.answer.describe) in \(String(format: "%.0f", o.answer.seconds * 1000)) ms"
                    + " | body \(BadInput.excerpt(o.c.body, focus: BadInput.focus(o.c.body)))"
                    + (o.answer.body.isEmpty ? "" : " | answer \(BadInput.excerpt(Array(o.answer.body.prefix(160)), width: 160))")
            }
            Issue.record("""
                \(offences.count) of \(requests) answers were not a 4xx within 2 s (\(Self.seedText)); by category and answer:
                \(byCategory.sorted { $0.key < $1.key }.map { "  \($0.key): \($0.value)" }.joined(separator: "\n"))
                first \(first.count) (at most 3 per category):
                \(first.joined(separator: "\n"))
                """)
        }
        let slowest = maxLatency
        #expect(slowest < 2, "slowest answer \(slowest) s")

        // No job was created, and the daemon is alive and healthy.
        let list = BadInput.HTTP.request(port: daemon.port, "GET", "/v1/jobs?limit=500")
        let listStatus = list.status
        #expect(listStatus == 200, "GET /v1/jobs answered \(list.describe)")
        let listed = ((try? JSONSerialization.jsonObject(with: Data(list.body))) as? [String: Any])?["jobs"] as? [[String: Any]] ?? []
        let createdBy = offences.filter { $0.target == "/v1/jobs" && (200..<300).contains($0.answer.status) }
        let names = listed.prefix(3).compactMap { $0["name"] as? String }
        let creators = createdBy.prefix(10).map { "#\($0.index) [\($0.c.category.rawValue)] \($0.c.note)" }.joined(separator: "; ")
        let jobCount = listed.count
        #expect(jobCount == 0, "\(jobCount) job(s) created (\(Self.seedText)), e.g. named \(names); created by: \(creators)")
        let health = BadInput.HTTP.request(port: daemon.port, "GET", "/healthz")
        let healthStatus = health.status
        #expect(healthStatus == 200, "/healthz answered \(health.describe)")
        let alive = daemon.isRunning
        #expect(alive, "mocod is not running at the end: \(daemon.exitDescription); its stderr: \(daemon.crashReport())")
    }
}

private extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}

/// The generator, a strict JSON checker, a minimal HTTP client and the daemon process.
enum BadInput {
    // MARK: - Cases

    enum Category: String, CaseIterable, Sendable {
        case numeric = "numeric out of range"
        case nanInf = "NaN/Infinity literals"
        case wrongTypes = "wrong types"
        case badValues = "bad values"
        case deepNesting = "10,000-deep nesting"
        case bigStrings = "1 MiB strings"
        case nulControl = "NUL/control characters"
        case invalidUTF8 = "invalid UTF-8"
        case duplicateKeys = "duplicate keys"
        case commas = "trailing/stray commas"
        case unknownFields = "unknown fields"
        case nonJSON = "non-JSON"
        case mutations = "random mutations"
    }

    struct Case: Sendable {
        let category: Category
        let note: String
        let body: [UInt8]
    }

    /// SplitMix64 (Steele, Lea, Flood 2014): the generator's only source of randomness.
    struct SplitMix64 {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
        mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next() >> 32) }
    }

    /// A JSON text built member by member: keys keep their order and may repeat, numbers and
    /// literals are written verbatim (so `NaN`, `1e400` or `01` can be sent).
    indirect enum J: Sendable {
        case raw(String)
        case str(String)
        case obj([(String, J)])
        case arr([J])

        var bytes: [UInt8] { var o: [UInt8] = []; write(&o); return o }

        func write(_ o: inout [UInt8]) {
            switch self {
            case .raw(let s): o += Array(s.utf8)
            case .str(let s): J.quote(s, &o)
            case .obj(let members):
                o.append(UInt8(ascii: "{"))
                for (i, (k, v)) in members.enumerated() {
                    if i > 0 { o.append(UInt8(ascii: ",")) }
                    J.quote(k, &o)
                    o.append(UInt8(ascii: ":"))
                    v.write(&o)
                }
                o.append(UInt8(ascii: "}"))
            case .arr(let items):
                o.append(UInt8(ascii: "["))
                for (i, v) in items.enumerated() {
                    if i > 0 { o.append(UInt8(ascii: ",")) }
                    v.write(&o)
                }
                o.append(UInt8(ascii: "]"))
            }
        }

        /// A JSON string: quotes and backslashes escaped, control characters (and DEL) as \u00XX.
        static func quote(_ s: String, _ o: inout [UInt8]) {
            o.append(UInt8(ascii: "\""))
            let hex = Array("0123456789abcdef".utf8)
            for c in s.utf8 {   // only ASCII is escaped, so UTF-8 bytes pass through
                switch c {
                case 0x22: o += [0x5C, 0x22]
                case 0x5C: o += [0x5C, 0x5C]
                case 0..<0x20, 0x7F: o += [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(c >> 4)], hex[Int(c & 15)]]
                default: o.append(c)
                }
            }
            o.append(UInt8(ascii: "\""))
        }

        /// This object with the member at `path` set (appended when missing), or removed for nil.
        func setting(_ path: [String], _ value: J?) -> J {
            guard case .obj(var members) = self, let key = path.first else { return self }
            let rest = Array(path.dropFirst())
            if let i = members.firstIndex(where: { $0.0 == key }) {
                if !rest.isEmpty { members[i].1 = members[i].1.setting(rest, value) }
                else if let value { members[i].1 = value }
                else { members.remove(at: i) }
            } else if let value {
                members.append((key, rest.isEmpty ? value : J.obj([]).setting(rest, value)))
            }
            return .obj(members)
        }

        func value(at path: [String]) -> J? {
            guard let key = path.first else { return self }
            guard case .obj(let members) = self, let v = members.first(where: { $0.0 == key })?.1 else { return nil }
            return v.value(at: Array(path.dropFirst()))
        }

        var members: [(String, J)] { if case .obj(let m) = self { m } else { [] } }
    }

    /// The valid spec the issue names (a dry run of it must answer 200).
    static let base: J = .obj([
        ("name", .str("fz")),
        ("data", .obj([("format", .str("npy")), ("path", .str("imgs.npy"))])),
        ("model", .obj([("arch", .str("resnet18")), ("stem", .str("cifar")), ("width", .raw("4")), ("in_channels", .raw("1")), ("dim", .raw("16"))])),
        ("moco", .obj([("queue", .raw("64")), ("bn_splits", .raw("1"))])),
        ("augment", .obj([("size", .raw("16"))])),
        ("optim", .obj([("batch_size", .raw("32")), ("epochs", .raw("1"))])),
        ("threads", .raw("1")),
    ])

    /// The same job with every field of the spec written out (an eval section included), so each
    /// variant changes exactly one member. Also valid.
    static let full: J = .obj([
        ("name", .str("fz")), ("method", .str("moco_v2")),
        ("data", .obj([("format", .str("npy")), ("path", .str("imgs.npy")), ("split", .str("train")), ("limit", .raw("null"))])),
        ("eval", .obj([("format", .str("npy")), ("path", .str("imgs.npy")), ("split", .str("test")), ("limit", .raw("null")),
                       ("knn_k", .raw("20")), ("knn_t", .raw("0.1")), ("every_epochs", .raw("1"))])),
        ("model", .obj([("arch", .str("resnet18")), ("stem", .str("cifar")), ("width", .raw("4")), ("in_channels", .raw("1")),
                        ("dim", .raw("16")), ("mlp_hidden", .raw("null"))])),
        ("moco", .obj([("queue", .raw("64")), ("momentum", .raw("0.99")), ("temperature", .raw("0.2")), ("bn_splits", .raw("1")),
                       ("symmetric", .raw("false"))])),
        ("augment", .obj([("preset", .str("v2")), ("size", .raw("16")), ("mean", .arr([.raw("0.5")])), ("std", .arr([.raw("0.25")]))])),
        ("optim", .obj([("batch_size", .raw("32")), ("epochs", .raw("1")), ("lr", .raw("0.03")), ("lr_scaling", .str("linear")),
                        ("weight_decay", .raw("0.0001")), ("momentum", .raw("0.9")), ("schedule", .str("cosine")),
                        ("milestones", .arr([.raw("120"), .raw("160")])), ("warmup_epochs", .raw("0"))])),
        ("checkpoint", .obj([("every_epochs", .raw("1")), ("every_steps", .raw("null")), ("keep_last", .raw("3")), ("keep_best", .raw("1"))])),
        ("seed", .raw("0")), ("threads", .raw("1")),
    ])

    static let validBases: [(label: String, spec: J)] = [("base", base), ("full", full)]

    /// A numeric field: its path, how the value sits there (alone, or first of an array), its
    /// type, and which of the probe values are legal for it (never sent: the daemon must accept them).
    struct NumericField: Sendable {
        enum Kind: Sendable { case int, uint, float }
        enum Slot: Sendable { case plain, firstOf([J]) }
        let path: [String]
        let slot: Slot
        let kind: Kind
        let legal: Set<String>
        let nullable: Bool
        var label: String { path.joined(separator: ".") + (slot.isArray ? "[0]" : "") }
        func placed(_ v: J) -> J { if case .firstOf(let rest) = slot { .arr([v] + rest) } else { v } }
        init(_ path: String, _ kind: Kind, legal: Set<String> = [], nullable: Bool = false, slot: Slot = .plain) {
            self.path = path.split(separator: ".").map(String.init); self.kind = kind; self.legal = legal; self.nullable = nullable; self.slot = slot
        }
    }

    /// Every numeric field of the preset, with the legal values read off JobSpec.validate() and
    /// Scheduler.validate() (bounds), for the `full` base (batch_size 32, epochs 1, in_channels 1,
    /// daemon --threads 1).
    static let numericFields: [NumericField] = [
        .init("model.width", .int),                                  // 1...256
        .init("model.in_channels", .int),                            // 1 or 3
        .init("model.dim", .int),                                    // 1...4096
        .init("model.mlp_hidden", .int, legal: ["0"], nullable: true),   // 0...16384 or null
        .init("moco.queue", .int),                                   // 1...262144, multiple of batch_size
        .init("moco.momentum", .float, legal: ["0"]),                // [0, 1)
        .init("moco.temperature", .float, legal: ["1e18", "1.5"]),   // > 0, finite
        .init("moco.bn_splits", .int),                               // >= 1, divides batch_size, >= 2 per split
        .init("augment.size", .int),                                 // 8...256 on this daemon
        .init("optim.batch_size", .int),                             // 2...1024 on this daemon
        .init("optim.epochs", .int),                                 // 1...1000 on this daemon
        .init("optim.lr", .float, legal: ["1e18", "1.5"]),           // > 0, finite
        .init("optim.weight_decay", .float, legal: ["0", "1e18", "1.5"]),   // >= 0
        .init("optim.momentum", .float, legal: ["0"]),               // [0, 1)
        .init("optim.warmup_epochs", .int, legal: ["0"]),            // 0 ..< epochs
        .init("optim.milestones", .int, legal: ["0", "-1", "1e18", "-1e18"], slot: .firstOf([.raw("160")])),   // any integer
        .init("checkpoint.every_epochs", .int, legal: ["1e18"], nullable: true),   // >= 1 or null
        .init("checkpoint.every_steps", .int, legal: ["1e18"], nullable: true),    // >= 1 or null
        .init("checkpoint.keep_last", .int, legal: ["1e18"]),        // >= 1
        .init("checkpoint.keep_best", .int, legal: ["0", "1e18"]),   // >= 0
        .init("data.limit", .int, legal: ["1e18"], nullable: true),  // > 0 or null
        .init("eval.knn_k", .int),                                   // 1...10000
        .init("eval.knn_t", .float, legal: ["1e18", "1.5"]),         // > 0, finite
        .init("eval.every_epochs", .int, legal: ["1e18"]),           // >= 1
        .init("eval.limit", .int, legal: ["1e18"], nullable: true),  // > 0 or null
        .init("seed", .uint, legal: ["0", "1e18", "9223372036854775808", "1e19"]),   // any UInt64
        .init("threads", .int),                                      // 1...daemon threads (1)
        .init("augment.mean", .float, legal: ["0", "-1", "1e18", "-1e18", "1.5"], slot: .firstOf([])),   // any finite Float
        .init("augment.std", .float, legal: ["1e18", "1.5"], slot: .firstOf([])),   // > 0
    ]
    /// The issue's probe values, then integer overflow and fractions for integer fields, Float overflow for floats.
    static let probeValues = ["0", "-1", "1e18", "-1e18", "1.5", "1e400"]
    static let integerExtras = ["9223372036854775808", "-9223372036854775809", "1e19", "18446744073709551616", "0.5"]
    static let floatExtras = ["1e39", "-1e39"]
    static let nonFiniteLiterals = ["NaN", "-NaN", "nan", "Infinity", "-Infinity", "+Infinity", "inf", "-inf"]

    static let stringFields = ["name", "method", "data.format", "data.path", "data.split", "eval.format", "eval.path", "eval.split",
                               "model.arch", "model.stem", "augment.preset", "optim.lr_scaling", "optim.schedule"]
    static let sections = ["data", "eval", "model", "moco", "augment", "optim", "checkpoint"]

    static func path(_ dotted: String) -> [String] { dotted.split(separator: ".").map(String.init) }

    /// `bytes` with the first occurrence of `marker` replaced.
    static func splice(_ bytes: [UInt8], _ marker: String, _ with: [UInt8]) -> [UInt8] {
        let m = Array(marker.utf8)
        guard m.count <= bytes.count else { return bytes }
        for i in 0...(bytes.count - m.count) where bytes[i] == m[0] && Array(bytes[i..<(i + m.count)]) == m {
            return Array(bytes[..<i]) + with + Array(bytes[(i + m.count)...])
        }
        return bytes
    }

    /// Where `body` first differs from the closest valid base (for excerpts).
    static func focus(_ body: [UInt8]) -> Int {
        validBases.map { b in
            let s = b.spec.bytes
            return zip(body, s).prefix { $0 == $1 }.count
        }.max() ?? 0
    }

    /// A printable excerpt: printable ASCII as is, the rest escaped, a window around `focus`.
    static func excerpt(_ b: [UInt8], focus: Int = 0, width: Int = 110) -> String {
        let start = max(0, min(focus - 30, b.count - width))
        let end = min(b.count, start + width)
        var s = start > 0 ? "…" : ""
        for x in b[start..<end] {
            switch x {
            case 0x5C: s += "\\\\"
            case 0x0A: s += "\\n"
            case 0x0D: s += "\\r"
            case 0x09: s += "\\t"
            case 0x20...0x7E: s.append(Character(Unicode.Scalar(x)))
            default: s += String(format: "\\x%02X", x)
            }
        }
        if end < b.count { s += "…" }
        return "«\(s)» (\(b.count) bytes)"
    }

    struct Generator {
        var rng: SplitMix64
        var cases: [Case] = []
        var seen: Set<[UInt8]>
        init(seed: UInt64) {
            rng = SplitMix64(state: seed)
            seen = Set(BadInput.validBases.map(\.spec.bytes))   // a valid base is never a bad case
        }
        mutating func add(_ category: Category, _ note: String, _ body: [UInt8]) {
            if seen.insert(body).inserted { cases.append(Case(category: category, note: note, body: body)) }
        }
        mutating func add(_ category: Category, _ note: String, _ spec: J) { add(category, note, spec.bytes) }
    }

    /// The bad cases for a seed: deterministic, distinct, none of them a valid spec.
    static func generate(seed: UInt64) -> [Case] {
        var g = Generator(seed: seed)
        let baseBytes = base.bytes, fullBytes = full.bytes
        let limit = 1 << 20   // HTTPLimits.maxBodyBytes

        // Numeric fields at 0, -1, 1e18, -1e18, 1.5, 1e400 (and overflow), where that value is illegal.
        for f in numericFields {
            let values = probeValues + (f.kind == .float ? floatExtras : integerExtras)
            for v in values where !f.legal.contains(v) {
                g.add(.numeric, "\(f.label) = \(v)", full.setting(f.path, f.placed(.raw(v))))
            }
        }
        // NaN and Infinity literals (not JSON) in every numeric field.
        for f in numericFields {
            for v in nonFiniteLiterals { g.add(.nanInf, "\(f.label) = \(v)", full.setting(f.path, f.placed(.raw(v)))) }
        }
        // Wrong types.
        for f in numericFields {
            var wrong: [J] = [.str("1"), .raw("true"), .raw("false"), .arr([.raw("1")]), .obj([]), .str(""), .str("NaN")]
            if !f.nullable || f.slot.isArray { wrong.append(.raw("null")) }
            for w in wrong { g.add(.wrongTypes, "\(f.label) = \(String(decoding: w.bytes, as: UTF8.self))", full.setting(f.path, f.placed(w))) }
        }
        for field in stringFields {
            let current = full.value(at: path(field)) ?? .str("")
            for w: J in [.raw("1"), .raw("true"), .raw("null"), .arr([]), .obj([]), .arr([current])] {
                g.add(.wrongTypes, "\(field) = \(String(decoding: w.bytes, as: UTF8.self))", full.setting(path(field), w))
            }
        }
        for w: J in [.raw("1"), .raw("0"), .str("true"), .str("false"), .raw("null"), .arr([]), .obj([])] {
            g.add(.wrongTypes, "moco.symmetric = \(String(decoding: w.bytes, as: UTF8.self))", full.setting(["moco", "symmetric"], w))
        }
        for s in sections {
            let section = full.value(at: [s]) ?? .obj([])
            var wrong: [J] = [.arr([]), .str("x"), .raw("1"), .raw("true"), .arr([section])]
            if s != "eval" { wrong.append(.raw("null")) }   // eval: null is legal (no evaluation)
            for w in wrong { g.add(.wrongTypes, "\(s) = \(String(decoding: w.bytes.prefix(40), as: UTF8.self))", full.setting([s], w)) }
            // The same on the short base where the section exists there.
            if base.value(at: [s]) != nil {
                for w: J in [.arr([]), .raw("null")] { g.add(.wrongTypes, "base \(s) = \(String(decoding: w.bytes, as: UTF8.self))", base.setting([s], w)) }
            }
        }
        for w: J in [.obj([]), .str("120"), .raw("120"), .raw("null"), .arr([.arr([.raw("120")])])] {
            g.add(.wrongTypes, "optim.milestones = \(String(decoding: w.bytes, as: UTF8.self))", full.setting(["optim", "milestones"], w))
        }
        for field in ["augment.mean", "augment.std"] {
            for w: J in [.obj([]), .str("0.5"), .raw("0.5"), .arr([.arr([.raw("0.5")])]), .arr([.str("0.5")])] {
                g.add(.wrongTypes, "\(field) = \(String(decoding: w.bytes, as: UTF8.self))", full.setting(path(field), w))
            }
        }

        // Values of the right type that are out of bounds or inconsistent.
        let badValues: [(String, J)] = [
            ("name", .str("")), ("name", .str(String(repeating: "a", count: 129))),
            ("method", .str("moco_v3")), ("method", .str("MOCO_V2")), ("method", .str("")),
            ("data.format", .str("NPY")), ("data.format", .str("bmp")), ("data.format", .str("")),
            ("data.path", .str("")), ("data.path", .str("missing.npy")), ("data.path", .str("../imgs.npy")),
            ("data.path", .str("./../imgs.npy")), ("data.path", .str("a/../imgs.npy")), ("data.path", .str("..")),
            ("data.path", .str("/etc/passwd")), ("data.path", .str("/")), ("data.path", .str("/imgs.npy")), ("data.path", .str("~/imgs.npy")),
            ("eval.format", .str("bmp")), ("eval.path", .str("")), ("eval.path", .str("/etc/passwd")), ("eval.path", .str("../imgs.npy")),
            ("model.arch", .str("resnet1000")), ("model.arch", .str("ResNet18")), ("model.arch", .str("")),
            ("model.stem", .str("imagenet2")), ("model.stem", .str("")), ("model.in_channels", .raw("2")),
            ("augment.preset", .str("v3")), ("optim.lr_scaling", .str("sqrt")), ("optim.schedule", .str("linear")),
            ("optim.schedule", .str("Cosine")),
            ("moco.queue", .raw("48")), ("moco.queue", .raw("262176")), ("moco.queue", .raw("1048608")),
            ("moco.bn_splits", .raw("3")), ("moco.bn_splits", .raw("32")), ("moco.bn_splits", .raw("64")),
            ("optim.warmup_epochs", .raw("1")), ("optim.batch_size", .raw("2048")), ("optim.epochs", .raw("5000")),
            ("optim.epochs", .raw("10001")), ("augment.size", .raw("384")), ("augment.size", .raw("7")), ("threads", .raw("2")),
            ("eval.knn_k", .raw("10001")), ("augment.mean", .arr([])), ("augment.mean", .arr([.raw("0.5"), .raw("0.5")])),
            ("augment.std", .arr([.raw("0.25"), .raw("0.25"), .raw("0.25")])), ("augment.std", .arr([])),
        ]
        for (field, v) in badValues {
            g.add(.badValues, "\(field) = \(String(decoding: v.bytes.prefix(40), as: UTF8.self))", full.setting(path(field), v))
        }
        for (field, v) in badValues.prefix(18) where base.value(at: path(field)) != nil || field == "method" {
            g.add(.badValues, "base \(field) = \(String(decoding: v.bytes.prefix(40), as: UTF8.self))", base.setting(path(field), v))
        }

        // 10,000-deep nesting (and deeper), closed and unclosed, alone and inside a field.
        func repeated(_ s: String, _ n: Int) -> [UInt8] { Array([[UInt8]](repeating: Array(s.utf8), count: n).joined()) }
        let deepArray = repeated("[", 10_000) + repeated("]", 10_000)
        let deepObject = repeated(#"{"a":"#, 10_000) + Array("1".utf8) + repeated("}", 10_000)
        g.add(.deepNesting, "10,000 nested arrays", deepArray)
        g.add(.deepNesting, "10,000 nested objects", deepObject)
        g.add(.deepNesting, "10,000 unclosed arrays", repeated("[", 10_000))
        g.add(.deepNesting, "10,000 unclosed objects", repeated(#"{"a":"#, 10_000))
        g.add(.deepNesting, "100,000 nested arrays", repeated("[", 100_000) + repeated("]", 100_000))
        g.add(.deepNesting, "10,000 alternating arrays/objects", repeated(#"[{"a":"#, 10_000) + Array("1".utf8) + repeated("}]", 10_000))
        g.add(.deepNesting, "name = 10,000 nested arrays", splice(base.setting(["name"], .str("@DEEP@")).bytes, "\"@DEEP@\"", deepArray))
        g.add(.deepNesting, "model = 10,000 nested objects", splice(base.setting(["model"], .str("@DEEP@")).bytes, "\"@DEEP@\"", deepObject))
        g.add(.deepNesting, "data.path = 10,000 nested arrays", splice(base.setting(["data", "path"], .str("@DEEP@")).bytes, "\"@DEEP@\"",
                                                                          repeated("[", 10_000) + Array("\"imgs.npy\"".utf8) + repeated("]", 10_000)))
        g.add(.deepNesting, "eval = 10,000 nested objects", splice(full.setting(["eval"], .str("@DEEP@")).bytes, "\"@DEEP@\"", deepObject))
        g.add(.deepNesting, "unknown field = 600 nested arrays", splice(base.setting(["x"], .str("@DEEP@")).bytes, "\"@DEEP@\"",
                                                                           repeated("[", 600) + repeated("]", 600)))

        // 1 MiB strings: over the body limit (413 is fine), and just under it.
        let under = limit - fullBytes.count - 64
        g.add(.bigStrings, "name of 1 MiB", base.setting(["name"], .str(String(repeating: "a", count: limit))))
        g.add(.bigStrings, "data.path of 1 MiB", base.setting(["data", "path"], .str(String(repeating: "a", count: limit))))
        g.add(.bigStrings, "eval.path of 1 MiB", full.setting(["eval", "path"], .str(String(repeating: "b", count: limit))))
        g.add(.bigStrings, "name just under the body limit", base.setting(["name"], .str(String(repeating: "a", count: under))))
        g.add(.bigStrings, "data.path just under the body limit", base.setting(["data", "path"], .str(String(repeating: "p", count: under))))
        g.add(.bigStrings, "data.path of x/x/… just under the body limit", base.setting(["data", "path"], .str(String(repeating: "x/", count: under / 2))))
        g.add(.bigStrings, "name of escaped NULs just under the body limit", base.setting(["name"], .str(String(repeating: "\u{0}", count: under / 6))))
        g.add(.bigStrings, "name of é just under the body limit", base.setting(["name"], .str(String(repeating: "é", count: under / 2))))
        g.add(.bigStrings, "unknown field with a key just under the body limit", base.setting([String(repeating: "k", count: under)], .raw("1")))
        g.add(.bigStrings, "model.width with a number of nearly 1 MiB digits", base.setting(["model", "width"], .raw(String(repeating: "9", count: under))))

        // NUL and control characters, JSON-escaped and raw.
        let pathValues = ["imgs.npy\u{0}", "imgs.npy\u{0}.bak", "\u{0}imgs.npy", "etc\u{0}", "d\u{0}/x", "imgs.npy\u{0}/../../../etc/passwd",
                          "\u{0}", "imgs.npy\u{1}", "imgs.npy\n", "imgs\u{1F}.npy", "imgs.npy\u{7F}"]
        for p in pathValues {
            g.add(.nulControl, "data.path = \(p.debugDescription)", base.setting(["data", "path"], .str(p)))
        }
        for p in pathValues.prefix(7) {
            g.add(.nulControl, "eval.path = \(p.debugDescription)", full.setting(["eval", "path"], .str(p)))
            g.add(.nulControl, "full data.path = \(p.debugDescription)", full.setting(["data", "path"], .str(p)))
        }
        for n in ["fz\u{0}", "\u{0}", "\u{0}fz", "f\u{1}z", "fz\u{1F}", "fz\u{7F}", "fz\n", "fz\r", "fz\t", "fz\u{1B}[31m"] {
            g.add(.nulControl, "name = \(n.debugDescription)", base.setting(["name"], .str(n)))
        }
        for (field, v) in [("data.format", "npy\u{0}"), ("method", "moco_v2\u{0}"), ("model.arch", "resnet18\u{0}"), ("optim.schedule", "cosine\u{0}"),
                           ("augment.preset", "v2\u{0}"), ("optim.lr_scaling", "linear\u{0}"), ("model.stem", "cifar\u{0}")] {
            g.add(.nulControl, "\(field) = \(v.debugDescription)", full.setting(path(field), .str(v)))
        }
        let rawBytes: [(String, String, [UInt8])] = [("name", "fz@R@", [0]), ("data.path", "imgs.npy@R@", [0]), ("name", "fz@R@", [1]), ("name", "fz@R@", [0x0A]),
                                    ("data.path", "imgs.npy@R@", [0x1F]), ("data.path", "@R@imgs.npy", [0]), ("eval.path", "imgs.npy@R@", [0])]
        for (field, value, raw) in rawBytes {
            let spec = field == "eval.path" ? full : base
            g.add(.nulControl, "\(field) with a raw byte 0x\(String(format: "%02X", raw[0]))", splice(spec.setting(path(field), .str(value)).bytes, "@R@", raw))
        }
        g.add(.nulControl, "raw NUL key byte", splice(base.setting(["na@R@me"], .raw("1")).bytes, "@R@", [0]))
        g.add(.nulControl, "NUL after the body", baseBytes + [0])
        g.add(.nulControl, "NUL before the body", [0] + baseBytes)
        g.add(.nulControl, "NUL after the opening brace", [baseBytes[0], 0] + baseBytes.dropFirst())
        g.add(.nulControl, "NUL between members", splice(baseBytes, #","threads""#, Array(",\u{0}\"threads\"".utf8)))
        g.add(.nulControl, "100 NULs", [UInt8](repeating: 0, count: 100))

        // Invalid UTF-8 inside strings (and outside them), and lone surrogate escapes in paths.
        let invalidSequences: [(String, [UInt8])] = [
            ("FF", [0xFF]), ("FE", [0xFE]), ("lone continuation 80", [0x80]), ("overlong NUL C0 80", [0xC0, 0x80]),
            ("overlong / C0 AF", [0xC0, 0xAF]), ("C1 BF", [0xC1, 0xBF]), ("overlong E0 80 AF", [0xE0, 0x80, 0xAF]),
            ("surrogate ED A0 80", [0xED, 0xA0, 0x80]), ("surrogate ED BF BF", [0xED, 0xBF, 0xBF]), ("above U+10FFFF F4 90 80 80", [0xF4, 0x90, 0x80, 0x80]),
            ("F5 80 80 80", [0xF5, 0x80, 0x80, 0x80]), ("5-byte F8 88 80 80 80", [0xF8, 0x88, 0x80, 0x80, 0x80]),
            ("truncated E2 82", [0xE2, 0x82]), ("truncated C3", [0xC3]),
        ]
        for (label, seq) in invalidSequences {
            g.add(.invalidUTF8, "name + \(label)", splice(base.setting(["name"], .str("fz@R@")).bytes, "@R@", seq))
            g.add(.invalidUTF8, "data.path + \(label)", splice(base.setting(["data", "path"], .str("imgs.npy@R@")).bytes, "@R@", seq))
        }
        for (label, seq) in invalidSequences.prefix(6) {
            g.add(.invalidUTF8, "eval.path + \(label)", splice(full.setting(["eval", "path"], .str("imgs.npy@R@")).bytes, "@R@", seq))
            g.add(.invalidUTF8, "key with \(label)", splice(base.setting(["na@R@me"], .str("fz")).bytes, "@R@", seq))
            g.add(.invalidUTF8, "\(label) between members", splice(baseBytes, #","threads""#, [UInt8(ascii: ",")] + seq + Array("\"threads\"".utf8)))
        }
        for esc in [#"\ud800"#, #"imgs.npy\udc00"#, #"\ud800\u0041"#, #"imgs\ud83d.npy"#, #"\udfff\ud800"#] {
            g.add(.invalidUTF8, "data.path with lone surrogate \(esc)", splice(base.setting(["data", "path"], .str("@R@")).bytes, "@R@", Array(esc.utf8)))
        }

        // Duplicate keys: whole members repeated, conflicting values, escaped spellings of one key.
        for spec in [base, full] {
            let members = spec.members
            for (i, m) in members.enumerated() {
                var dup = members; dup.insert(m, at: i + 1)
                g.add(.duplicateKeys, "\(spec.members.count == base.members.count ? "base" : "full") top-level \(m.0) twice", J.obj(dup))
                if case .obj(let inner) = m.1, let first = inner.first {
                    g.add(.duplicateKeys, "\(m.0).\(first.0) twice", spec.setting([m.0], .obj(inner + [first])))
                }
            }
        }
        for (i, m) in base.members.enumerated() {
            if case .obj(let inner) = m.1 {
                for (j, im) in inner.enumerated() where j > 0 {
                    var dup = inner; dup.insert(im, at: j)
                    g.add(.duplicateKeys, "base \(m.0).\(im.0) twice", base.setting([base.members[i].0], .obj(dup)))
                }
            }
        }
        let conflicting: [(String, J, J)] = [
            ("moco.bn_splits", .raw("0"), .raw("1")), ("moco.bn_splits", .raw("1"), .raw("0")), ("threads", .raw("99"), .raw("1")),
            ("data.path", .str("/etc/passwd"), .str("imgs.npy")), ("name", .str(""), .str("fz")), ("name", .str("fz"), .str("fz2")),
            ("optim.epochs", .raw("1"), .raw("2")), ("model.width", .raw("0"), .raw("4")), ("data.path", .str("imgs.npy\u{0}"), .str("imgs.npy")),
        ]
        for (field, first, second) in conflicting {
            let p = path(field)
            let parent = p.count == 1 ? base : (base.value(at: Array(p.dropLast())) ?? .obj([]))
            let key = p.last!
            var members = parent.members.filter { $0.0 != key }
            members += [(key, first), (key, second)]
            let spec = p.count == 1 ? J.obj(members) : base.setting(Array(p.dropLast()), .obj(members))
            g.add(.duplicateKeys, "\(field) = \(String(decoding: first.bytes, as: UTF8.self)) then \(String(decoding: second.bytes, as: UTF8.self))", spec)
        }
        g.add(.duplicateKeys, #"name and its escaped spelling na\u006de"#, splice(base.setting(["@K@"], .str("fz2")).bytes, "\"@K@\"", Array(#""na\u006de""#.utf8)))
        g.add(.duplicateKeys, #"threads and \u0074hreads"#, splice(base.setting(["@K@"], .raw("1")).bytes, "\"@K@\"", Array(#""\u0074hreads""#.utf8)))
        g.add(.duplicateKeys, "every member twice", J.obj(base.members.flatMap { [$0, $0] }))

        // Trailing and stray commas.
        func positions(_ b: [UInt8], _ c: Character) -> [Int] { b.indices.filter { b[$0] == c.asciiValue! } }
        for (label, b) in [("base", baseBytes), ("full", fullBytes)] {
            for (k, i) in positions(b, "}").enumerated() {
                g.add(.commas, "\(label): trailing comma before } #\(k)", Array(b[..<i]) + [UInt8(ascii: ",")] + Array(b[i...]))
            }
            for (k, i) in positions(b, "]").enumerated() {
                g.add(.commas, "\(label): trailing comma before ] #\(k)", Array(b[..<i]) + [UInt8(ascii: ",")] + Array(b[i...]))
            }
            var all: [UInt8] = []
            for x in b { if x == UInt8(ascii: "}") || x == UInt8(ascii: "]") { all.append(UInt8(ascii: ",")) }; all.append(x) }
            g.add(.commas, "\(label): trailing commas everywhere", all)
        }
        for (k, i) in positions(baseBytes, ",").enumerated() {
            g.add(.commas, "base: double comma #\(k)", Array(baseBytes[..<i]) + [UInt8(ascii: ",")] + Array(baseBytes[i...]))
        }
        g.add(.commas, "leading comma in the object", [UInt8(ascii: "{"), UInt8(ascii: ",")] + baseBytes.dropFirst())
        g.add(.commas, "comma after the object", baseBytes + [UInt8(ascii: ",")])
        g.add(.commas, "leading comma in an array", splice(fullBytes, "[120,", Array("[,120,".utf8)))
        g.add(.commas, "empty array element", splice(fullBytes, "[120,", Array("[120,,".utf8)))
        g.add(.commas, "trailing comma with whitespace", Array(baseBytes.dropLast()) + Array(", \n }".utf8))

        // Unknown fields, top level and in every section.
        let unknownTop = ["foo", "Name", "NAME", "name ", " name", "", "threads_", "__proto__", "constructor", "dry_run", "id", "state",
                          "priority", "idempotency_key", "spec", "eval_", "$schema", "na\u{0}me", "😀", "checkpoints", "datas"]
        let unknownValues: [J] = [.raw("1"), .str("x"), .raw("null"), .obj([]), .arr([]), .raw("true")]
        for (k, key) in unknownTop.enumerated() {
            g.add(.unknownFields, "unknown top-level \(key.debugDescription)", base.setting([key], unknownValues[k % unknownValues.count]))
        }
        let unknownInner = [("data", "root"), ("data", "foo"), ("model", "depth"), ("model", "Width"), ("moco", "K"), ("moco", "m"),
                            ("augment", "flip"), ("augment", "Size"), ("optim", "nesterov"), ("optim", "lr_scale"), ("checkpoint", "every"),
                            ("checkpoint", "dir"), ("eval", "foo"), ("eval", "k"), ("model", "mlp"), ("optim", "warmup")]
        for (k, (section, key)) in unknownInner.enumerated() {
            g.add(.unknownFields, "unknown \(section).\(key)", full.setting([section, key], unknownValues[k % unknownValues.count]))
        }
        g.add(.unknownFields, "unknown field in a base section", base.setting(["moco", "queue_size"], .raw("64")))
        g.add(.unknownFields, "unknown field nested under data.path's level", base.setting(["data", "path2"], .str("imgs.npy")))

        // Not JSON at all, not an object, or broken JSON.
        let bt = String(decoding: baseBytes, as: UTF8.self)
        let texts: [String] = [
            "", " ", "\r\n", "null", "true", "false", "0", "-1", "1e400", "\"fz\"", "[]", "{}", "[\(bt)]", "{\"spec\":\(bt)}",
            "<job><name>fz</name><data><path>imgs.npy</path></data></job>", "<?xml version=\"1.0\"?><job/>",
            "name: fz\ndata:\n  format: npy\n  path: imgs.npy\n", "name=fz&data.format=npy&data.path=imgs.npy",
            bt.replacingOccurrences(of: "\"", with: "'"), bt.replacingOccurrences(of: "\"name\"", with: "name"),
            bt.replacingOccurrences(of: ",\"threads\"", with: "/* c */,\"threads\""), bt.replacingOccurrences(of: ",\"threads\"", with: "// c\n,\"threads\""),
            bt + "x", bt + bt, "(" + bt + ")", "cb(" + bt + ");", bt + "\n" + bt + "\n", "{", "}", "{{}}", "{\"name\"}", "{\"name\":}", "{:\"fz\"}",
            "{\"name\" \"fz\"}", "{\"name\":\"fz\" \"threads\":1}", "[1,2", "\"unterminated", "tru", "nul", "01", "-", "1.", ".5", "+1", "0x10",
            "Infinity", "NaN", bt.replacingOccurrences(of: "1}", with: "True}"), bt.replacingOccurrences(of: "\"fz\"", with: "None"),
            bt.replacingOccurrences(of: ":4,", with: ":04,"), bt.replacingOccurrences(of: ":4,", with: ":+4,"), bt.replacingOccurrences(of: ":4,", with: ":4.,"),
            bt.replacingOccurrences(of: ":4,", with: ":0x4,"), bt.replacingOccurrences(of: ":16}", with: ":1_6}"),
            bt.replacingOccurrences(of: "\"fz\"", with: "\"f\\z\""), bt.replacingOccurrences(of: "\"fz\"", with: "\"\\u00zz\""),
            bt.replacingOccurrences(of: "\"fz\"", with: "\"fz"), bt.replacingOccurrences(of: ":", with: "="), bt.replacingOccurrences(of: "{", with: "["),
        ]
        for t in texts { g.add(.nonJSON, "text \(String(t.prefix(30)).debugDescription)", Array(t.utf8)) }
        for n in 0..<baseBytes.count { g.add(.nonJSON, "prefix of base, \(n) bytes", Array(baseBytes.prefix(n))) }
        for n in stride(from: 1, to: fullBytes.count, by: 5) { g.add(.nonJSON, "prefix of full, \(n) bytes", Array(fullBytes.prefix(n))) }
        var made = 0
        while made < 40 {   // random bytes
            let body = (0..<(1 + g.rng.below(512))).map { _ in g.rng.byte() }
            if StrictJSON.verdict(body) == .invalid { g.add(.nonJSON, "random bytes #\(made)", body); made += 1 }
        }
        let soup = Array(#"{}[]:,"0123456789.-eEtruefalsn \#\"#.utf8)
        made = 0
        while made < 60 {   // JSON-alphabet soup and printable ASCII
            let ascii = made % 3 == 2
            let body = (0..<(1 + g.rng.below(64))).map { _ in ascii ? UInt8(0x20 + g.rng.below(95)) : soup[g.rng.below(soup.count)] }
            if StrictJSON.verdict(body) == .invalid { g.add(.nonJSON, "\(ascii ? "random ASCII" : "JSON-alphabet soup") #\(made)", body); made += 1 }
        }

        // Random byte mutations of a valid base that break strict JSON syntax.
        let alphabet = Array(#"{}[],:"\ -.0123456789eEtrufalsn"#.utf8) + [0x00, 0x0A, 0xFF]
        made = 0
        var attempts = 0
        while made < 450 && attempts < 50_000 {
            attempts += 1
            let source = g.rng.below(2) == 0 ? baseBytes : fullBytes
            var m = source
            for _ in 0..<(1 + g.rng.below(3)) {
                let i = g.rng.below(m.count)
                switch g.rng.below(7) {
                case 0: m[i] = g.rng.byte()
                case 1: m[i] = alphabet[g.rng.below(alphabet.count)]
                case 2: m.remove(at: i)
                case 3: m.insert(g.rng.byte(), at: i)
                case 4: m.insert(alphabet[g.rng.below(alphabet.count)], at: i)
                case 5: m.swapAt(i, g.rng.below(m.count))
                default:
                    let n = 1 + g.rng.below(min(8, m.count - i))
                    m.insert(contentsOf: Array(m[i..<(i + n)]), at: i)
                }
                if m.isEmpty { m = [g.rng.byte()] }
            }
            guard StrictJSON.verdict(m) == .invalid else { continue }   // still valid JSON: not a syntax mutation
            let at = zip(m, source).prefix { $0 == $1 }.count
            let before = g.cases.count
            g.add(.mutations, "mutation of \(source == baseBytes ? "base" : "full") at byte \(at)", m)
            if g.cases.count > before { made += 1 }
        }
        return g.cases
    }

    // MARK: - Strict RFC 8259

    /// A strict RFC 8259 checker (UTF-8 only, no trailing commas, no NaN, no leading zeros, paired
    /// surrogate escapes). Used to keep only mutations that break the JSON syntax.
    struct StrictJSON {
        enum Verdict { case valid, invalid, tooDeep }
        private struct Bad: Error {}
        private struct Deep: Error {}
        let b: [UInt8]
        var i = 0

        static func verdict(_ bytes: [UInt8]) -> Verdict {
            guard String(validating: bytes, as: UTF8.self) != nil else { return .invalid }
            var p = StrictJSON(b: bytes)
            do {
                p.ws()
                try p.value(0)
                p.ws()
                return p.i == bytes.count ? .valid : .invalid
            } catch is Deep { return .tooDeep } catch { return .invalid }
        }

        private var peek: UInt8? { i < b.count ? b[i] : nil }
        private mutating func ws() { while let c = peek, c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { i += 1 } }
        private mutating func expect(_ c: UInt8) throws { guard peek == c else { throw Bad() }; i += 1 }

        private mutating func value(_ depth: Int) throws {
            guard depth < 256 else { throw Deep() }
            guard let c = peek else { throw Bad() }
            switch c {
            case UInt8(ascii: "{"):
                i += 1; ws()
                if peek == UInt8(ascii: "}") { i += 1; return }
                while true {
                    ws(); try string(); ws(); try expect(UInt8(ascii: ":")); ws(); try value(depth + 1); ws()
                    if peek == UInt8(ascii: ",") { i += 1; continue }
                    try expect(UInt8(ascii: "}")); return
                }
            case UInt8(ascii: "["):
                i += 1; ws()
                if peek == UInt8(ascii: "]") { i += 1; return }
                while true {
                    ws(); try value(depth + 1); ws()
                    if peek == UInt8(ascii: ",") { i += 1; continue }
                    try expect(UInt8(ascii: "]")); return
                }
            case UInt8(ascii: "\""): try string()
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            default: try number()
            }
        }

        private mutating func literal(_ s: String) throws { for c in s.utf8 { try expect(c) } }

        private mutating func digits() throws {
            guard let c = peek, (0x30...0x39).contains(c) else { throw Bad() }
            while let c = peek, (0x30...0x39).contains(c) { i += 1 }
        }

        private mutating func number() throws {
            if peek == UInt8(ascii: "-") { i += 1 }
            if peek == UInt8(ascii: "0") { i += 1 } else { try digits() }
            if peek == UInt8(ascii: ".") { i += 1; try digits() }
            if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
                i += 1
                if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { i += 1 }
                try digits()
            }
        }

        private mutating func hex4() throws -> UInt32 {
            var v: UInt32 = 0
            for _ in 0..<4 {
                guard let c = peek, let d = Int(String(Unicode.Scalar(c)), radix: 16) else { throw Bad() }
                v = v << 4 | UInt32(d); i += 1
            }
            return v
        }

        private mutating func string() throws {
            try expect(UInt8(ascii: "\""))
            while true {
                guard let c = peek else { throw Bad() }
                i += 1
                switch c {
                case UInt8(ascii: "\""): return
                case 0..<0x20: throw Bad()
                case UInt8(ascii: "\\"):
                    guard let e = peek else { throw Bad() }
                    i += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                         UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"): break
                    case UInt8(ascii: "u"):
                        let u = try hex4()
                        if (0xDC00...0xDFFF).contains(u) { throw Bad() }
                        if (0xD800...0xDBFF).contains(u) {
                            try expect(UInt8(ascii: "\\")); try expect(UInt8(ascii: "u"))
                            guard (0xDC00...0xDFFF).contains(try hex4()) else { throw Bad() }
                        }
                    default: throw Bad()
                    }
                default: break
                }
            }
        }
    }

    // MARK: - HTTP

    /// An answer: the HTTP status (0: no HTTP answer, -1: connection refused, -2: no answer within
    /// the 2 s receive timeout), the time to the complete response, and the response body.
    struct Answer: Sendable {
        var status: Int
        var seconds: Double
        var body: [UInt8] = []
        var note = ""
        var kind: String {
            switch status {
            case -2: "timeout"
            case -1: "connection refused"
            case 0: "no HTTP answer"
            default: (400..<500).contains(status) ? "slow \(status)" : "\(status)"
            }
        }
        var describe: String { status > 0 ? "HTTP \(status)" : "\(kind)\(note.isEmpty ? "" : " (\(note))")" }
    }

    /// A tiny blocking HTTP/1.1 client: one request per connection, exact bytes, a 2 s receive timeout.
    enum HTTP {
        static func request(port: Int, _ method: String, _ target: String, body: [UInt8]? = nil, timeout: Int = 2) -> Answer {
            let clock = ContinuousClock()
            let start = clock.now
            func elapsed() -> Double { let d = clock.now - start; return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return Answer(status: 0, seconds: 0, note: "socket() failed") }
            defer { close(fd) }
            var tv = timeval(tv_sec: timeout, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            if rc != 0 {
                let e = errno
                return Answer(status: e == ECONNREFUSED ? -1 : 0, seconds: elapsed(), note: String(cString: strerror(e)))
            }
            var head = "\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
            let out = Array((head + "\r\n").utf8) + (body ?? [])
            var sent = 0
            while sent < out.count {
                let n = out.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { break }   // answered early (413) and closed: read what it said
                sent += n
            }
            var data: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            var total: Int?   // head + Content-Length, once the head is in
            var failure: Int32 = 0
            while total.map({ data.count < $0 }) ?? true {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n == 0 { break }
                if n < 0 { failure = errno; break }
                data += buf[0..<n]
                if total == nil, let end = headEnd(data) {
                    let headText = String(decoding: data[..<end], as: UTF8.self).lowercased()
                    let length = headText.components(separatedBy: "\r\n").first { $0.hasPrefix("content-length:") }
                        .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) }
                    if let length { total = end + 4 + length }
                }
            }
            let seconds = elapsed()
            guard let end = headEnd(data) else {
                if failure == EAGAIN || failure == EWOULDBLOCK { return Answer(status: -2, seconds: seconds, note: "no answer within \(timeout) s") }
                let why = failure != 0 ? String(cString: strerror(failure)) : data.isEmpty ? "closed without an answer" : "no complete head"
                return Answer(status: 0, seconds: seconds, note: why + (sent < out.count ? ", \(sent) of \(out.count) bytes sent" : ""))
            }
            let statusLine = String(decoding: data[..<end], as: UTF8.self).prefix { $0 != "\r" }
            let parts = statusLine.split(separator: " ")
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
                return Answer(status: 0, seconds: seconds, note: "bad status line \(statusLine.prefix(40).debugDescription)")
            }
            var body = Array(data[(end + 4)...])
            if String(decoding: data[..<end], as: UTF8.self).lowercased().contains("transfer-encoding: chunked") {
                body = Array(LiveDaemon.dechunk(Data(body)))
            }
            if failure == EAGAIN || failure == EWOULDBLOCK { return Answer(status: -2, seconds: seconds, body: body, note: "HTTP \(status) head, body not complete within \(timeout) s") }
            return Answer(status: status, seconds: seconds, body: body)
        }

        static func headEnd(_ d: [UInt8]) -> Int? {
            guard d.count >= 4 else { return nil }
            for i in 0...(d.count - 4) where d[i] == 0x0D && d[i + 1] == 0x0A && d[i + 2] == 0x0D && d[i + 3] == 0x0A { return i }
            return nil
        }
    }

    // MARK: - The daemon

    /// The real mocod binary on a free port with a temporary data directory; restartable (same
    /// directory and port) after a crash, its stderr kept per start.
    final class Daemon {
        let exe: URL
        let dir: URL
        let port: Int
        private(set) var process = Process()
        private(set) var starts = 0

        init(exe: URL, dir: URL) throws {
            self.exe = exe; self.dir = dir
            port = CrashTests().freePort()
            try start()
        }

        var stderrURL: URL { dir.appendingPathComponent("mocod-stderr-\(starts).log") }

        func start() throws {
            starts += 1
            _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
            let p = Process()
            p.executableURL = exe
            // --api-cpu-share 0: should a bad spec be accepted and train, answers are not throttled
            // behind it (that would turn one failure into thousands of timeouts).
            p.arguments = ["--port", String(port), "--data-dir", dir.path, "--data-root", dir.appendingPathComponent("datasets").path,
                           "--threads", "1", "--max-running", "1", "--api-cpu-share", "0", "--log-level", "warning"]
            var env = ProcessInfo.processInfo.environment
            env["SWIFT_BACKTRACE"] = "enable=no"   // a crash exits at once, its message still on stderr
            p.environment = env
            p.standardOutput = FileHandle.nullDevice
            p.standardError = try FileHandle(forWritingTo: stderrURL)
            try p.run()
            process = p
        }

        func waitHealthy(timeout: Double = 15) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if !process.isRunning { return false }
                if HTTP.request(port: port, "GET", "/healthz").status == 200 { return true }
                usleep(50_000)
            }
            return false
        }

        var isRunning: Bool { process.isRunning }

        /// Whether the process has exited (waiting up to a second for the exit to be noticed).
        func died() -> Bool {
            for _ in 0..<20 {
                if !process.isRunning { return true }
                usleep(50_000)
            }
            return false
        }

        var exitDescription: String {
            if process.isRunning { return "still running" }
            let s = process.terminationStatus
            return process.terminationReason == .uncaughtSignal ? "killed by signal \(s)\(s == SIGILL ? " (SIGILL: a Swift trap)" : s == SIGTRAP ? " (SIGTRAP: a Swift trap)" : s == SIGSEGV ? " (SIGSEGV)" : "")" : "exited with status \(s)"
        }

        func stderrTail(_ n: Int = 600) -> String {
            let text = (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? ""
            let tail = String(text.suffix(n)).trimmingCharacters(in: .whitespacesAndNewlines)
            return tail.isEmpty ? "(empty)" : tail.debugDescription
        }

        /// The stderr of the current start without stack-trace frames: the fatal error and the log lines before it.
        func crashReport(_ n: Int = 500) -> String {
            let text = (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? ""
            let lines = text.split(separator: "\n").filter { line in
                let t = line.drop { $0 == " " }
                let frame = t.first?.isNumber == true && t.contains("0x")
                return !frame && !t.hasPrefix("Current stack trace") && !t.hasPrefix("Stack dump")
            }
            let kept = String(lines.joined(separator: "\n").suffix(n)).trimmingCharacters(in: .whitespacesAndNewlines)
            return kept.isEmpty ? "(empty)" : kept.debugDescription
        }

        func stop() {
            if process.isRunning { process.terminate(); process.waitUntilExit() }
        }
    }
}

private extension BadInput.NumericField.Slot {
    var isArray: Bool { if case .firstOf = self { true } else { false } }
}
