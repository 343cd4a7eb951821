import Autograd
import Foundation

/// What an evaluation or embedding job does with a training job's checkpoint (the body of
/// `POST /v1/jobs/{id}/evaluations` and `.../embeddings`, as the daemon stores it):
/// - `knn`: weighted kNN top-1 of the `data` split's images against a feature bank of
///   `train_data` (default: the training job's own `data` split), both labeled;
/// - `linear`: a linear classifier trained on frozen `train_data` features for `epochs`, top-1
///   and top-5 on `data`;
/// - `embedding`: the backbone features of every `data` image, as an N x C float32 NPY file.
public struct EvaluationSpec: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable, CaseIterable { case knn, linear, embedding }

    public var kind: Kind
    /// A checkpoint file of the training job (`latest`: its newest, resolved when submitted).
    public var checkpoint: String
    /// The images evaluated (kNN queries, linear test split) or embedded.
    public var data: JobSpec.DataSource
    /// The labeled split the kNN bank or the linear classifier is built from (nil: the training job's `data`).
    public var train_data: JobSpec.DataSource?
    /// kNN neighbours and temperature (nil: the training job's `eval` settings, else 200 and 0.1).
    public var k: Int?
    public var t: Float?
    /// Linear evaluation epochs.
    public var epochs: Int
    public var precision: Precision
    /// Compute threads (nil: the training job's).
    public var threads: Int?

    /// The fields a request may give, with their defaults (`kind` is the route's for embeddings).
    static func base(_ kind: Kind) -> [String: Any] {
        let data: [String: Any] = ["format": "idx", "path": NSNull(), "split": kind == .embedding ? "train" : "test", "limit": NSNull(),
                                   "cache_mb": 256, "max_error_rate": 0.01]
        // An embedding's kind is its route's: not a field of its body.
        var out: [String: Any] = ["checkpoint": "latest", "data": data, "precision": "fp32", "threads": NSNull()]
        if kind != .embedding {
            out["kind"] = kind.rawValue
            out["train_data"] = NSNull()
            out["k"] = NSNull()
            out["t"] = NSNull()
            out["epochs"] = 30
        }
        return out
    }

    static let integerFields: Set<String> = ["k", "epochs", "threads", "data.limit", "data.cache_mb", "train_data.limit", "train_data.cache_mb"]

    /// Parses a request strictly, every problem reported by its field as job specs are:
    /// `embedding` true parses the embeddings route's body (no `kind`), else an evaluation's
    /// (`kind` knn or linear, required).
    public static func parse(_ json: Data, embedding: Bool) throws(SpecError) -> EvaluationSpec {
        do { try StrictJSON.validate(json) } catch {
            throw SpecError([FieldIssue(error.path, "\(error.problem) (line \(error.line), column \(error.column))")])
        }
        guard let user = (try? JSONSerialization.jsonObject(with: json, options: [.fragmentsAllowed])) as? [String: Any] else {
            throw SpecError([FieldIssue("$", "must be a JSON object")])
        }
        var issues: [FieldIssue] = []
        var kind = Kind.embedding
        if !embedding {
            switch user["kind"] {
            case let s as String where s == "knn" || s == "linear": kind = Kind(rawValue: s)!
            case nil: issues.append(FieldIssue("kind", "is required: knn or linear"))
            default: issues.append(FieldIssue("kind", "must be knn or linear"))
            }
            if !issues.isEmpty { throw SpecError(issues) }
        }
        var base = base(kind)
        if user["train_data"] is [String: Any] {
            base["train_data"] = ["format": "idx", "path": NSNull(), "split": "train", "limit": NSNull(), "cache_mb": 256, "max_error_rate": 0.01] as [String: Any]
        }
        var merged = JobSpec.merge(base, user, path: "", issues: &issues)
        JobSpec.checkNumbers(merged, path: "", integers: integerFields, issues: &issues)
        guard issues.isEmpty else { throw SpecError(issues) }
        for section in ["data", "train_data"] {
            guard var d = merged[section] as? [String: Any], let f = d["format"] as? String, JobSpec.DataFormat(rawValue: f) == nil else { continue }
            issues.append(FieldIssue("\(section).format", "must be one of \(JobSpec.DataFormat.allCases.map(\.rawValue).joined(separator: ", "))"))
            d["format"] = "idx"
            merged[section] = d
        }
        if let p = merged["precision"] as? String, Precision(rawValue: p) == nil {
            issues.append(FieldIssue("precision", "must be one of \(Precision.allCases.map(\.rawValue).joined(separator: ", "))"))
            merged["precision"] = "fp32"
        }
        if kind == .embedding { merged["kind"] = "embedding"; merged["epochs"] = 30 }
        let spec: EvaluationSpec
        do {
            spec = try JSONDecoder().decode(EvaluationSpec.self, from: try JSONSerialization.data(withJSONObject: merged))
        } catch let error as DecodingError {
            throw SpecError(issues + [JobSpec.describe(error)])
        } catch {
            throw SpecError(issues + [FieldIssue("$", "\(error)")])
        }
        issues += spec.validate()
        guard issues.isEmpty else { throw SpecError(issues) }
        return spec
    }

    /// Range checks, every problem in field order.
    public func validate() -> [FieldIssue] {
        var issues: [FieldIssue] = []
        if checkpoint.isEmpty || checkpoint.contains("/") || checkpoint.hasPrefix(".") {
            issues.append(FieldIssue("checkpoint", "must be a checkpoint's file name (see the job's checkpoints) or latest"))
        }
        for (name, source) in [("data", data)] + (train_data.map { [("train_data", $0)] } ?? []) {
            if source.path.isEmpty { issues.append(FieldIssue("\(name).path", "must not be empty")) }
            if let l = source.limit, l < 1 { issues.append(FieldIssue("\(name).limit", "must be at least 1")) }
            if let c = source.cache_mb, c < 0 || c > 1 << 20 { issues.append(FieldIssue("\(name).cache_mb", "must be between 0 and 1048576")) }
            if let r = source.max_error_rate, !(r >= 0 && r <= 1) { issues.append(FieldIssue("\(name).max_error_rate", "must be between 0 and 1")) }
        }
        if let k, !(1...10_000).contains(k) { issues.append(FieldIssue("k", "must be between 1 and 10000")) }
        if let t, !(t > 0 && t <= 100) { issues.append(FieldIssue("t", "must be above 0 and at most 100")) }
        if !(1...1000).contains(epochs) { issues.append(FieldIssue("epochs", "must be between 1 and 1000")) }
        if let threads, !(1...1024).contains(threads) { issues.append(FieldIssue("threads", "must be between 1 and 1024")) }
        return issues
    }

    /// The spec as stored: sorted keys, every field present.
    public func canonicalJSON() -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? e.encode(self)) ?? Data("{}".utf8), as: UTF8.self)
    }
}

/// What an evaluation or embedding job found (stored in its record as `result`).
public struct EvaluationResult: Codable, Sendable, Equatable {
    public var kind: EvaluationSpec.Kind
    public var checkpoint: String
    /// Images evaluated or embedded, and in the bank / classifier's training split.
    public var images: Int
    public var train_images: Int?
    /// kNN: top-1 in percent, with its k and t. Linear: top-1 and top-5 in percent, after `epochs`.
    public var top1: Double?
    public var top5: Double?
    public var k: Int?
    public var t: Float?
    public var epochs: Int?
    /// Embedding: the NPY file (in the job's folder), its rows and columns, size and SHA-256.
    public var artifact: String?
    public var shape: [Int]?
    public var bytes: Int64?
    public var sha256: String?
    public var precision: Precision
    public var seconds: Double

    public init(kind: EvaluationSpec.Kind, checkpoint: String, images: Int, precision: Precision, seconds: Double) {
        self.kind = kind; self.checkpoint = checkpoint; self.images = images; self.precision = precision; self.seconds = seconds
    }

    /// The finding in words (the job's reason when it succeeds).
    public var summary: String {
        func pct(_ v: Double?) -> String { v.map { String(format: "%.2f %%", $0) } ?? "?" }
        switch kind {
        case .knn:
            return "kNN top-1 \(pct(top1)) (k \(k ?? 0), t \(t.map { "\($0)" } ?? "?")) on \(images) images, checkpoint \(checkpoint)"
        case .linear:
            return "linear top-1 \(pct(top1)), top-5 \(pct(top5)) after \(epochs ?? 0) epochs on \(images) images, checkpoint \(checkpoint)"
        case .embedding:
            return "embedded \(images) images as \((shape ?? []).map(String.init).joined(separator: " x ")) float32 in \(artifact ?? "?"), checkpoint \(checkpoint)"
        }
    }
}
