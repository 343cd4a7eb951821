import Autograd
import Data
import Foundation
import Kernels
import NN

/// One problem with a job spec: the field's dotted path and what is wrong.
public struct FieldIssue: Sendable, Equatable, Codable, CustomStringConvertible {
    public let field: String
    public let problem: String
    public init(_ field: String, _ problem: String) { self.field = field; self.problem = problem }
    public var description: String { "\(field): \(problem)" }
}

/// A job spec that cannot be accepted, with every problem found (not just the first).
public struct SpecError: Error, Sendable, CustomStringConvertible {
    public let issues: [FieldIssue]
    public init(_ issues: [FieldIssue]) { self.issues = issues }
    public var description: String { "invalid job spec:\n" + issues.map { "  - \($0)" }.joined(separator: "\n") }
}

/// The job spec: the public contract shared by `moco train` and the daemon (see README).
/// Omitted fields take the method's preset; unknown fields are rejected by their path.
public struct JobSpec: Codable, Sendable, Equatable {
    public enum Method: String, Codable, Sendable, CaseIterable {
        case moco_v2, moco_v1, simclr, moco_v3
        /// MoCo v1 and v2: the methods with a queue (the `moco` section) and data parallelism.
        public var hasQueue: Bool { self == .moco_v1 || self == .moco_v2 }
    }
    /// `sgd` (MoCo v1/v2) or `lars` (SimCLR, MoCo v3).
    public enum OptimizerKind: String, Codable, Sendable, CaseIterable { case sgd, lars }
    /// How a dataset is stored (see README's data formats).
    public enum DataFormat: String, Codable, Sendable, CaseIterable { case idx, cifar10, cifar100, folder, npy, tar }
    /// `linear`: `lr * batch_size / 256`; `none`: `lr` as given.
    public enum LRScaling: String, Codable, Sendable, CaseIterable { case linear, none }
    /// `cosine` (per epoch), `cosine_step` (per step), `step` (x0.1 at `milestones`), `constant`.
    public enum Schedule: String, Codable, Sendable, CaseIterable { case cosine, cosine_step, step, constant }

    public struct DataSource: Codable, Sendable, Equatable {
        public var format: DataFormat
        public var path: String
        /// `train` or `test` (ignored by `npy`; a subfolder name for `folder` when it exists).
        public var split: String
        public var limit: Int?
        /// Streamed formats (`folder`, `tar`): the decoded-image cache's budget in MiB (0: none).
        public var cache_mb: Int?
        /// Streamed formats: the share of unusable images (skipped and counted) that fails the job.
        public var max_error_rate: Double?
        public init(format: DataFormat, path: String, split: String, limit: Int? = nil, cache_mb: Int? = nil, max_error_rate: Double? = nil) {
            self.format = format; self.path = path; self.split = split; self.limit = limit
            self.cache_mb = cache_mb; self.max_error_rate = max_error_rate
        }
        public var cacheBytes: Int { (cache_mb ?? 256) << 20 }
        public var errorRateLimit: Double { max_error_rate ?? 0.01 }
        /// Whether the images are decoded as views need them (image folders, tar shards).
        public var isStreamed: Bool { format == .folder || format == .tar }
    }

    public struct Eval: Codable, Sendable, Equatable {
        public var format: DataFormat
        public var path: String
        public var split: String
        public var limit: Int?
        public var knn_k: Int
        public var knn_t: Float
        public var every_epochs: Int
        public var source: DataSource { DataSource(format: format, path: path, split: split, limit: limit) }
    }

    public struct Model: Codable, Sendable, Equatable {
        public var arch: ResNetConfig.Arch
        public var stem: ResNetConfig.Stem
        public var width: Int
        public var in_channels: Int
        /// Output dimension of the projection head.
        public var dim: Int
        /// Hidden width of the v2 MLP head; null = the backbone's feature width; 0 = a linear head (v1).
        public var mlp_hidden: Int?
    }

    public struct MoCoParameters: Codable, Sendable, Equatable {
        public var queue: Int
        public var momentum: Float
        public var temperature: Float
        /// Split-BN groups: batch-norm statistics over this many sub-batches (shuffle BN on one process).
        public var bn_splits: Int
        public var symmetric: Bool
    }

    /// SimCLR's own field (the `simclr` section, present for that method only).
    public struct SimCLRParameters: Codable, Sendable, Equatable {
        /// τ of NT-Xent.
        public var temperature: Float
    }

    /// MoCo v3's own fields (the `moco_v3` section, present for that method only).
    public struct MoCoV3Parameters: Codable, Sendable, Equatable {
        /// The momentum at the start; a half-cosine takes it to 1 by the end.
        public var momentum: Float
        /// τ of the contrastive loss (which is scaled by 2τ).
        public var temperature: Float
    }

    public struct Augmentation: Codable, Sendable, Equatable {
        public var preset: AugmentConfig.Preset
        public var size: Int
        /// Per-channel mean/std for normalization; null = computed from the training split.
        public var mean: [Float]?
        public var std: [Float]?
    }

    public struct Optimization: Codable, Sendable, Equatable {
        public var batch_size: Int
        public var epochs: Int
        /// Learning rate at batch size 256 scaled linearly (`lr * batch_size / 256`) when
        /// `lr_scaling` is `linear`; as given when `none`.
        public var lr: Float
        public var lr_scaling: LRScaling
        public var weight_decay: Float
        public var momentum: Float
        public var schedule: Schedule
        public var milestones: [Int]
        public var warmup_epochs: Int
        public var optimizer: OptimizerKind
        /// LARS's trust coefficient η (ignored by SGD).
        public var trust_coefficient: Float
    }

    public struct Checkpointing: Codable, Sendable, Equatable {
        public var every_epochs: Int?
        public var every_steps: Int?
        public var keep_last: Int
        public var keep_best: Int
    }

    /// How many processes (MPI ranks) train the job together, each on its block of every
    /// global batch (`optim.batch_size` stays the global batch).
    public struct Distributed: Codable, Sendable, Equatable {
        public var processes: Int
        /// The longest a rank waits in one collective for the others before it gives up and the
        /// job restarts (a hung rank must not hold the rest forever). It must cover rank 0's
        /// evaluations and checkpoints, which the others wait through.
        public var timeout_s: Int
    }

    public var name: String
    public var method: Method
    public var data: DataSource
    public var eval: Eval?
    public var model: Model
    /// MoCo v1/v2's section; nil for the other methods.
    public var moco: MoCoParameters?
    /// SimCLR's section; nil for the other methods.
    public var simclr: SimCLRParameters?
    /// MoCo v3's section; nil for the other methods.
    public var moco_v3: MoCoV3Parameters?
    public var augment: Augmentation
    public var optim: Optimization
    public var checkpoint: Checkpointing
    public var seed: UInt64
    public var threads: Int
    /// `fp32`, or `bf16` mixed precision (see `Precision`): where oneDNN runs bf16 kernels.
    public var precision: Precision
    public var distributed: Distributed
    /// How often the daemon restarts a worker that exited abnormally (a signal, a non-zero
    /// status) from the job's newest valid checkpoint before the job fails.
    public var max_restarts: Int

    // MARK: - Presets

    /// The preset of a method as a JSON object (every field present, nulls included): the
    /// papers' ImageNet recipes (ResNet-50, 224 px), each method with its own section (`moco`,
    /// `simclr` or `moco_v3`) and optimizer.
    public static func preset(_ method: Method) -> [String: Any] {
        let v2 = method == .moco_v2
        var out: [String: Any] = [
            "name": "moco-job",
            "method": method.rawValue,
            "data": ["format": "idx", "path": NSNull(), "split": "train", "limit": NSNull(), "cache_mb": 256, "max_error_rate": 0.01] as [String: Any],
            "eval": NSNull(),
            "model": ["arch": "resnet50", "stem": "imagenet", "width": 64, "in_channels": 3, "dim": 128,
                      "mlp_hidden": method == .moco_v1 ? 0 : NSNull()] as [String: Any],
            // aug+ (SimCLR's augmentation, which MoCo v2 adopted) for every method but MoCo v1.
            "augment": ["preset": method == .moco_v1 ? "v1" : "v2", "size": 224, "mean": NSNull(), "std": NSNull()] as [String: Any],
            "checkpoint": ["every_epochs": 1, "every_steps": NSNull(), "keep_last": 3, "keep_best": 1] as [String: Any],
            "seed": 0,
            "threads": 2,
            "precision": "fp32",
            "distributed": ["processes": 1, "timeout_s": 300] as [String: Any],
            "max_restarts": 2,
        ]
        func optim(lr: Double, wd: Double, schedule: String, warmup: Int, epochs: Int, optimizer: String) -> [String: Any] {
            ["batch_size": 256, "epochs": epochs, "lr": lr, "lr_scaling": "linear", "weight_decay": wd, "momentum": 0.9,
             "schedule": schedule, "milestones": [120, 160], "warmup_epochs": warmup, "optimizer": optimizer, "trust_coefficient": 0.001]
        }
        switch method {
        case .moco_v1, .moco_v2:
            // K 65536, m 0.999, SGD 0.03 at batch 256 for 200 epochs (v1: steps at 120 and 160; v2: cosine).
            out["moco"] = ["queue": 65536, "momentum": 0.999, "temperature": v2 ? 0.2 : 0.07, "bn_splits": 1, "symmetric": false] as [String: Any]
            out["optim"] = optim(lr: 0.03, wd: 1e-4, schedule: v2 ? "cosine" : "step", warmup: 0, epochs: 200, optimizer: "sgd")
        case .simclr:
            // τ 0.5 (the SimCLR code's CIFAR-10 setting), LARS at 0.3 x batch/256, decay 1e-6, 10
            // warm-up epochs then cosine per step.
            out["simclr"] = ["temperature": 0.5] as [String: Any]
            out["optim"] = optim(lr: 0.3, wd: 1e-6, schedule: "cosine_step", warmup: 10, epochs: 100, optimizer: "lars")
        case .moco_v3:
            // The MoCo v3 code's ResNet-50 defaults: dim 256, MLP 4096, m 0.99 rising to 1, τ 1.0,
            // LARS at 0.6 x batch/256, decay 1e-6, 10 warm-up epochs then cosine per step.
            out["model"] = ["arch": "resnet50", "stem": "imagenet", "width": 64, "in_channels": 3, "dim": 256, "mlp_hidden": 4096] as [String: Any]
            out["moco_v3"] = ["momentum": 0.99, "temperature": 1.0] as [String: Any]
            out["optim"] = optim(lr: 0.6, wd: 1e-6, schedule: "cosine_step", warmup: 10, epochs: 100, optimizer: "lars")
        }
        return out
    }

    static var evalDefaults: [String: Any] { ["format": "idx", "path": NSNull(), "split": "test", "limit": NSNull(),
                                              "knn_k": 200, "knn_t": 0.1, "every_epochs": 1] }

    // MARK: - Parsing

    /// Parses and validates a spec: strict RFC 8259 JSON first (no trailing commas, NaN or
    /// Infinity, duplicate keys or invalid UTF-8; nesting and size limits), then merged over its
    /// method's preset, with unknown fields, type errors and out-of-range values all reported together.
    public static func parse(_ json: Data) throws(SpecError) -> JobSpec {
        do { try StrictJSON.validate(json) } catch {
            throw SpecError([FieldIssue(error.path, "\(error.problem) (line \(error.line), column \(error.column))")])
        }
        guard let object = try? JSONSerialization.jsonObject(with: json, options: [.fragmentsAllowed]) else {
            throw SpecError([FieldIssue("$", "not valid JSON")])
        }
        guard let user = object as? [String: Any] else { throw SpecError([FieldIssue("$", "must be a JSON object")]) }
        var issues: [FieldIssue] = []
        var method = Method.moco_v2
        if let m = user["method"] {
            if let s = m as? String, let parsed = Method(rawValue: s) { method = parsed } else {
                issues.append(FieldIssue("method", "must be one of \(Method.allCases.map(\.rawValue).joined(separator: ", "))"))
            }
        }
        var base = preset(method)
        if user["eval"] is [String: Any] { base["eval"] = evalDefaults }
        let merged = merge(base, user, path: "", issues: &issues)
        checkNumbers(merged, path: "", issues: &issues)
        guard issues.isEmpty else { throw SpecError(issues) }
        // Closed sets are checked here, so their problems are reported with the rest (a decoder
        // stops at the first); a value outside its set is decoded as the set's first member.
        var decodable = merged
        let choiceIssues = checkChoices(&decodable)
        let spec: JobSpec
        do {
            let data = try JSONSerialization.data(withJSONObject: decodable)
            spec = try JSONDecoder().decode(JobSpec.self, from: data)
        } catch let error as DecodingError {
            throw SpecError(choiceIssues + [describe(error)])
        } catch {
            throw SpecError(choiceIssues + [FieldIssue("$", "\(error)")])
        }
        let problems = choiceIssues + spec.validate()
        guard problems.isEmpty else { throw SpecError(problems) }
        return spec
    }

    /// The closed sets among the fields: each path with its members and the problem reported
    /// for any other value.
    static let choices: [(path: [String], members: [String], problem: String)] = {
        func oneOf(_ m: [String]) -> String { "must be one of \(m.joined(separator: ", "))" }
        let formats = DataFormat.allCases.map(\.rawValue)
        let schedules = Schedule.allCases.map(\.rawValue)
        let archs = ResNetConfig.Arch.allCases.map(\.rawValue), stems = ResNetConfig.Stem.allCases.map(\.rawValue)
        let presets = AugmentConfig.Preset.allCases.map(\.rawValue)
        return [
            (["data", "format"], formats, oneOf(formats)),
            (["eval", "format"], formats, oneOf(formats)),
            (["model", "arch"], archs, oneOf(archs)),
            (["model", "stem"], stems, oneOf(stems)),
            (["augment", "preset"], presets, oneOf(presets)),
            (["optim", "lr_scaling"], LRScaling.allCases.map(\.rawValue), "must be linear or none"),
            (["optim", "schedule"], schedules, oneOf(schedules)),
            (["optim", "optimizer"], OptimizerKind.allCases.map(\.rawValue), oneOf(OptimizerKind.allCases.map(\.rawValue))),
            (["precision"], Precision.allCases.map(\.rawValue), oneOf(Precision.allCases.map(\.rawValue))),
        ]
    }()

    /// Reports (and replaces with the set's first member) every closed-set field whose value is
    /// a string outside its set; other types are left for the decoder to name.
    static func checkChoices(_ object: inout [String: Any]) -> [FieldIssue] {
        var issues: [FieldIssue] = []
        for (path, members, problem) in choices {
            if path.count == 1 {
                guard let value = object[path[0]] as? String, !members.contains(value) else { continue }
                issues.append(FieldIssue(path[0], problem))
                object[path[0]] = members[0]
                continue
            }
            guard var section = object[path[0]] as? [String: Any], let value = section[path[1]] as? String,
                  !members.contains(value) else { continue }
            issues.append(FieldIssue(path.joined(separator: "."), problem))
            section[path[1]] = members[0]
            object[path[0]] = section
        }
        return issues
    }

    /// `user` over `base`: objects merge field by field; a field `base` lacks is unknown.
    static func merge(_ base: [String: Any], _ user: [String: Any], path: String, issues: inout [FieldIssue]) -> [String: Any] {
        var out = base
        for (key, value) in user {
            let p = path.isEmpty ? key : "\(path).\(key)"
            guard let b = base[key] else { issues.append(FieldIssue(p, "unknown field")); continue }
            if let bo = b as? [String: Any] {
                if let uo = value as? [String: Any] { out[key] = merge(bo, uo, path: p, issues: &issues) }
                else if value is NSNull, key == "eval" { out[key] = NSNull() }
                else { issues.append(FieldIssue(p, "must be an object")) }
            } else {
                out[key] = value
            }
        }
        return out
    }

    /// Fields decoded as integers (`[]`: every element of the array); the rest are floats.
    static let integerFields: Set<String> = [
        "data.limit", "data.cache_mb", "eval.limit", "eval.knn_k", "eval.every_epochs", "model.width", "model.in_channels", "model.dim",
        "model.mlp_hidden", "moco.queue", "moco.bn_splits", "augment.size", "optim.batch_size", "optim.epochs",
        "optim.milestones[]", "optim.warmup_epochs", "checkpoint.every_epochs", "checkpoint.every_steps",
        "checkpoint.keep_last", "checkpoint.keep_best", "seed", "threads", "max_restarts", "distributed.processes", "distributed.timeout_s",
    ]

    /// Numbers the decoder would reject without naming the field (a fraction for an integer, a
    /// float beyond Float's range), reported by their path instead.
    /// `integers` names the fields decoded as integers (a job spec's by default; an evaluation
    /// passes its own).
    static func checkNumbers(_ value: Any, path: String, integers: Set<String> = integerFields, issues: inout [FieldIssue]) {
        if let object = value as? [String: Any] {
            for (k, v) in object { checkNumbers(v, path: path.isEmpty ? k : "\(path).\(k)", integers: integers, issues: &issues) }
        } else if let array = value as? [Any] {
            for (i, v) in array.enumerated() {
                let before = issues.count
                checkNumbers(v, path: path + "[]", integers: integers, issues: &issues)
                for j in before..<issues.count where issues[j].field == path + "[]" { issues[j] = FieldIssue("\(path)[\(i)]", issues[j].problem) }
            }
        } else if let n = value as? NSNumber, String(cString: n.objCType) != "c" {   // "c": a JSON true/false
            let d = n.doubleValue
            let integral = String(cString: n.objCType) != "d" || (d.isFinite && d.rounded() == d)
            if integers.contains(path) {
                let limit = path == "seed" ? 1.8446744073709552e19 : 9.2e18
                if !integral { issues.append(FieldIssue(path, "must be an integer")) }
                else if d >= limit || d < (path == "seed" ? 0 : -9.2e18) { issues.append(FieldIssue(path, "is out of range")) }
            } else if !d.isFinite || abs(d) > Double(Float.greatestFiniteMagnitude) {
                issues.append(FieldIssue(path, "is out of range (at most \(Float.greatestFiniteMagnitude) in magnitude)"))
            }
        }
    }

    static func describe(_ error: DecodingError) -> FieldIssue {
        func path(_ c: [CodingKey]) -> String { c.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".").replacingOccurrences(of: ".[", with: "[") }
        switch error {
        case .typeMismatch(let t, let ctx): return FieldIssue(path(ctx.codingPath), "must be \(typeName(t))")
        case .valueNotFound(let t, let ctx): return FieldIssue(path(ctx.codingPath), "is required (\(typeName(t)))")
        case .keyNotFound(let k, let ctx): return FieldIssue(path(ctx.codingPath + [k]), "is required")
        case .dataCorrupted(let ctx):
            let p = path(ctx.codingPath)
            return FieldIssue(p.isEmpty ? "$" : p, ctx.debugDescription.contains("Cannot initialize") ? "has an unsupported value" : ctx.debugDescription)
        @unknown default: return FieldIssue("$", "\(error)")
        }
    }

    static func typeName(_ t: Any.Type) -> String {
        switch t {
        case is Int.Type, is UInt64.Type, is Int?.Type: "an integer"
        case is Float.Type, is Double.Type: "a number"
        case is String.Type: "a string"
        case is Bool.Type: "true or false"
        default: "\(t)"
        }
    }

    // MARK: - Validation

    /// Range and consistency checks on a decoded spec (every problem, in field order).
    ///
    /// Total: every numeric field is range-checked on its own first (zero, negative, huge and
    /// non-finite values are caught here), and the checks that do arithmetic across fields
    /// (divisibility, products) run only on fields that passed theirs, so no user value can
    /// reach a trap (a division by zero, an overflow) here or later.
    public func validate() -> [FieldIssue] {
        var p: [FieldIssue] = []
        @discardableResult
        func need(_ ok: Bool, _ field: String, _ problem: String) -> Bool { if !ok { p.append(FieldIssue(field, problem)) }; return ok }
        func between<T: Comparable>(_ v: T, _ lo: T, _ hi: T) -> Bool { v >= lo && v <= hi }
        func path(_ field: String, _ value: String) {
            need(!value.isEmpty, field, "is required")
            need(value.utf8.count <= 4096, field, "must be at most 4096 bytes")
            need(value.unicodeScalars.allSatisfy { $0.value >= 0x20 && !(0x7f...0x9f).contains($0.value) }, field,
                 "must not contain NUL or other control characters")
        }
        need(!name.isEmpty && name.count <= 128, "name", "must be 1 to 128 characters")
        need(name.unicodeScalars.allSatisfy { $0.value >= 0x20 && !(0x7f...0x9f).contains($0.value) }, "name", "must not contain control characters")
        path("data.path", data.path)
        need(["train", "test"].contains(data.split) || Self.isPlainName(data.split), "data.split", "must be train, test or a plain folder name")
        need(data.limit.map { between($0, 1, Self.maxImages) } ?? true, "data.limit", "must be between 1 and \(Self.maxImages), or null")
        need(data.cache_mb.map { between($0, 0, 65_536) } ?? true, "data.cache_mb", "must be between 0 and 65536")
        need(data.max_error_rate.map { $0.isFinite && between($0, 0, 1) } ?? true, "data.max_error_rate", "must be between 0 and 1")
        if let e = eval {
            path("eval.path", e.path)
            need(["train", "test"].contains(e.split) || Self.isPlainName(e.split), "eval.split", "must be train, test or a plain folder name")
            need(e.limit.map { between($0, 1, Self.maxImages) } ?? true, "eval.limit", "must be between 1 and \(Self.maxImages), or null")
            need(between(e.knn_k, 1, 10_000), "eval.knn_k", "must be between 1 and 10000")
            need(e.knn_t.isFinite && between(e.knn_t, 1e-4, 100), "eval.knn_t", "must be between 0.0001 and 100")
            need(between(e.every_epochs, 1, 10_000), "eval.every_epochs", "must be between 1 and 10000")
        }
        need(between(model.width, 1, 256), "model.width", "must be between 1 and 256")
        need(model.in_channels == 1 || model.in_channels == 3, "model.in_channels", "must be 1 or 3")
        need(between(model.dim, 1, 4096), "model.dim", "must be between 1 and 4096")
        need(model.mlp_hidden.map { between($0, 0, 16384) } ?? true, "model.mlp_hidden", "must be between 0 and 16384, or null")
        // The method's own section (the preset gives each method its own; the others are unknown fields).
        var queueOK = false, splitsOK = false
        if let moco {
            queueOK = need(between(moco.queue, 1, 1 << 20), "moco.queue", "must be between 1 and 1048576")
            need(moco.momentum.isFinite && moco.momentum >= 0 && moco.momentum < 1, "moco.momentum", "must be in [0, 1)")
            need(moco.temperature.isFinite && between(moco.temperature, 1e-4, 100), "moco.temperature", "must be between 0.0001 and 100")
            splitsOK = need(between(moco.bn_splits, 1, 4096), "moco.bn_splits", "must be between 1 and 4096")
        }
        if let simclr {
            need(simclr.temperature.isFinite && between(simclr.temperature, 1e-4, 100), "simclr.temperature", "must be between 0.0001 and 100")
        }
        if let v3 = moco_v3 {
            need(v3.momentum.isFinite && v3.momentum >= 0 && v3.momentum < 1, "moco_v3.momentum", "must be in [0, 1)")
            need(v3.temperature.isFinite && between(v3.temperature, 1e-4, 100), "moco_v3.temperature", "must be between 0.0001 and 100")
            need(model.mlp_hidden != 0, "model.mlp_hidden", "must be above 0 for moco_v3 (its projector and predictor are MLPs), or null")
        }
        need(method.hasQueue == (moco != nil), "moco", method.hasQueue ? "is required for \(method.rawValue)" : "is only for moco_v1 and moco_v2")
        need((method == .simclr) == (simclr != nil), "simclr", method == .simclr ? "is required for simclr" : "is only for simclr")
        need((method == .moco_v3) == (moco_v3 != nil), "moco_v3", method == .moco_v3 ? "is required for moco_v3" : "is only for moco_v3")
        need(between(augment.size, 8, 512), "augment.size", "must be between 8 and 512")
        for (field, values) in [("augment.mean", augment.mean), ("augment.std", augment.std)] {
            if let v = values {
                need(v.count == 1 || v.count == model.in_channels, field, "must have 1 or in_channels (\(model.in_channels)) values")
            }
        }
        if let m = augment.mean { need(m.allSatisfy { $0.isFinite && abs($0) <= 1e6 }, "augment.mean", "values must be finite, at most 1e6 in magnitude") }
        if let s = augment.std { need(s.allSatisfy { $0.isFinite && $0 >= 1e-6 && $0 <= 1e6 }, "augment.std", "values must be between 1e-6 and 1e6") }
        let batchOK = need(between(optim.batch_size, 2, 4096), "optim.batch_size", "must be between 2 and 4096")
        let epochsOK = need(between(optim.epochs, 1, 10_000), "optim.epochs", "must be between 1 and 10000")
        need(optim.lr.isFinite && optim.lr > 0, "optim.lr", "must be positive and finite")
        need(optim.weight_decay.isFinite && between(optim.weight_decay, 0, 1), "optim.weight_decay", "must be between 0 and 1")
        need(optim.momentum.isFinite && optim.momentum >= 0 && optim.momentum < 1, "optim.momentum", "must be in [0, 1)")
        need(optim.trust_coefficient.isFinite && optim.trust_coefficient > 0 && optim.trust_coefficient <= 1, "optim.trust_coefficient", "must be in (0, 1]")
        need(optim.milestones.count <= 100, "optim.milestones", "must have at most 100 entries")
        need(optim.milestones.allSatisfy { between($0, 1, 10_000) }, "optim.milestones", "entries must be epochs between 1 and 10000")
        let warmupOK = need(between(optim.warmup_epochs, 0, 10_000), "optim.warmup_epochs", "must be between 0 and 10000")
        need(checkpoint.every_epochs.map { between($0, 1, 10_000) } ?? true, "checkpoint.every_epochs", "must be between 1 and 10000, or null")
        need(checkpoint.every_steps.map { between($0, 1, 1 << 40) } ?? true, "checkpoint.every_steps", "must be between 1 and 2^40, or null")
        need(between(checkpoint.keep_last, 1, 1000), "checkpoint.keep_last", "must be between 1 and 1000")
        need(between(checkpoint.keep_best, 0, 1000), "checkpoint.keep_best", "must be between 0 and 1000")
        need(between(threads, 1, 256), "threads", "must be between 1 and 256")
        need(between(max_restarts, 0, 100), "max_restarts", "must be between 0 and 100")
        // Consistency between sections: only on values that passed their own range checks.
        if epochsOK && warmupOK {
            need(optim.warmup_epochs < optim.epochs, "optim.warmup_epochs", "must be below epochs (\(optim.epochs))")
        }
        if batchOK && queueOK, let moco {
            let perStep = moco.symmetric ? 2 * optim.batch_size : optim.batch_size
            need(moco.queue % perStep == 0, "moco.queue",
                 "must be a multiple of \(moco.symmetric ? "2 x batch_size" : "batch_size") (\(perStep)) so keys enqueue without wrapping")
        }
        if batchOK && splitsOK, let moco {
            if need(optim.batch_size % moco.bn_splits == 0, "moco.bn_splits", "must divide batch_size (\(optim.batch_size))") {
                need(optim.batch_size / moco.bn_splits >= 2, "moco.bn_splits", "leaves fewer than 2 images per split")
            }
        }
        let processes = distributed.processes
        need(between(distributed.timeout_s, 5, 86_400), "distributed.timeout_s", "must be between 5 and 86400 seconds")
        if need(between(processes, 1, 256), "distributed.processes", "must be between 1 and 256"), processes > 1 {
            if batchOK { need(optim.batch_size % processes == 0, "distributed.processes", "must divide optim.batch_size (\(optim.batch_size))") }
            if splitsOK, let moco {
                need(moco.bn_splits % processes == 0, "moco.bn_splits",
                     "must be a multiple of distributed.processes (\(processes)): each process splits its block into bn_splits / processes groups")
            }
            if let moco { need(!moco.symmetric, "moco.symmetric", "must be false when distributed.processes is above 1") }
            need(method.hasQueue, "distributed.processes", "must be 1 for method \(method.rawValue): data parallelism covers moco_v1 and moco_v2")
        }
        return p
    }

    /// The most images a dataset (or a `limit`) may name.
    public static let maxImages = 1 << 31

    /// A single path component of letters, digits, `.`, `_` and `-` (not `.` or `..`).
    static func isPlainName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 255 && s != "." && s != ".." &&
            s.unicodeScalars.allSatisfy { ($0.properties.isAlphabetic && $0.isASCII) || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0) }
    }

    /// The learning rate actually used (`lr` scaled by `batch_size / 256` under linear scaling).
    public var effectiveLearningRate: Float {
        optim.lr_scaling == .linear ? optim.lr * Float(optim.batch_size) / 256 : optim.lr
    }

    public var schedule: LearningRateSchedule {
        let main: LearningRateSchedule = switch optim.schedule {
        case .cosine: .cosine(epochs: optim.epochs, perStep: false)
        case .cosine_step: .cosine(epochs: optim.epochs, perStep: true)
        case .step: .multiStep(milestones: optim.milestones, gamma: 0.1)
        case .constant: .constant
        }
        return optim.warmup_epochs > 0 ? .warmup(epochs: optim.warmup_epochs, then: main) : main
    }

    public var resnetConfig: ResNetConfig {
        ResNetConfig(arch: model.arch, stem: model.stem, width: model.width, inChannels: model.in_channels, numClasses: model.dim)
    }

    /// The spec as canonical JSON (sorted keys), as stored in checkpoints.
    public func canonicalJSON() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try! enc.encode(self), as: UTF8.self)
    }
}

extension JobSpec {
    /// What this spec asks of the machine that the machine lacks: bf16 needs oneDNN to run
    /// bf16 kernels (AVX512-BF16 or AMX); elsewhere oneDNN would emulate them, slower than fp32.
    public func machineIssues(bf16 support: Runtime.BF16Support) -> [FieldIssue] {
        guard precision == .bf16, !support.onednn_bf16 else { return [] }
        return [FieldIssue("precision", "bf16 needs a CPU whose AVX512-BF16 or AMX-BF16 oneDNN uses (here: \(Runtime.dnnlISA)); use fp32")]
    }
}

/// Checks that need the data: sizes against the spec. Returns warnings; throws on errors.
public struct Preflight: Sendable {
    public var warnings: [String] = []

    public static func check(_ spec: JobSpec, train: ImageDataset, eval: ImageDataset?) throws(SpecError) -> Preflight {
        var issues: [FieldIssue] = spec.machineIssues(bf16: Runtime.bf16)
        var out = Preflight()
        if spec.optim.batch_size > train.count {
            issues.append(FieldIssue("optim.batch_size", "is \(spec.optim.batch_size) but the training split has only \(train.count) images"))
        }
        if train.channels != spec.model.in_channels {
            issues.append(FieldIssue("model.in_channels", "is \(spec.model.in_channels) but the images have \(train.channels) channel(s)"))
        }
        if let eval {
            if eval.labels == nil { issues.append(FieldIssue("eval", "the evaluation split has no labels")) }
            if train.labels == nil { issues.append(FieldIssue("data", "kNN evaluation needs labels on the training split (the feature bank)")) }
            if eval.channels != train.channels || eval.height != train.height || eval.width != train.width {
                issues.append(FieldIssue("eval", "images are \(eval.height)x\(eval.width)x\(eval.channels), training images \(train.height)x\(train.width)x\(train.channels)"))
            }
        }
        if let moco = spec.moco, moco.queue > train.count {
            out.warnings.append("moco.queue (\(moco.queue)) exceeds the \(train.count) training images: the queue will hold stale keys of the same images")
        }
        guard issues.isEmpty else { throw SpecError(issues) }
        return out
    }
}
