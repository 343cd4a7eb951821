import Autograd
import CCrypto
import Foundation
import NN

/// SHA-256 through OpenSSL's libcrypto.
public enum SHA256 {
    public static func hex(_ data: Data) -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let ok = data.withUnsafeBytes { raw in
            digest.withUnsafeMutableBufferPointer { EVP_Digest(raw.baseAddress, raw.count, $0.baseAddress, &length, EVP_sha256(), nil) }
        }
        precondition(ok == 1 && length == 32, "EVP_Digest failed")
        return digest.map { String(format: "%02x", $0) }.joined()
    }

    public static func hex(fileAt url: URL) throws -> String { hex(try Data(contentsOf: url, options: .mappedIfSafe)) }
}

/// What a checkpoint records besides tensors: where training stood and the spec that made it.
public struct CheckpointInfo: Sendable, Equatable, Codable {
    /// Optimizer steps taken so far (the next step's 0-based index).
    public var step: Int
    /// The epoch in progress (0-based); `step % stepsPerEpoch` of its batches are done.
    public var epoch: Int
    public var knnTop1: Double?
    public var spec: JobSpec
    public var created: Date
    /// Taken on the last step of an epoch before that epoch's scheduled evaluation ran (a stop
    /// landed there): a resume runs the evaluation first, so none is lost or run twice.
    public var evalDue: Bool = false

    public init(step: Int, epoch: Int, knnTop1: Double?, spec: JobSpec, created: Date, evalDue: Bool = false) {
        self.step = step; self.epoch = epoch; self.knnTop1 = knnTop1; self.spec = spec; self.created = created; self.evalDue = evalDue
    }
}

/// Full training state in a safetensors file: the method's state (for MoCo both encoders with
/// their heads and BN buffers, the queue and its pointer), the optimizer's momentum buffers, step
/// and epoch, the random state, and the job spec in `__metadata__`.
public enum Checkpoint {
    public static let formatVersion = "mocod-checkpoint-1"

    public static func fileName(epoch: Int, step: Int) -> String {
        String(format: "ckpt-e%04d-s%08d.safetensors", epoch, step)
    }

    /// The state as a safetensors file image (not yet written).
    public static func encode(model: any TrainingMethod, optimizer: any Optimizer, info: CheckpointInfo, rng: SeededGenerator) -> SafeTensorsFile {
        var tensors = model.checkpointTensors(optimizer: optimizer)
        tensors.append(("step", SafeTensor(int64s: [Int64(info.step)], shape: [])))
        tensors.append(("epoch", SafeTensor(int64s: [Int64(info.epoch)], shape: [])))
        let s = rng.state
        tensors.append(("rng.shuffle", SafeTensor(int64s: [s.0, s.1, s.2, s.3].map { Int64(bitPattern: $0) }, shape: [4])))
        var meta = ["format": formatVersion, "spec": info.spec.canonicalJSON(), "step": String(info.step), "epoch": String(info.epoch),
                    "created": ISO8601DateFormatter().string(from: info.created)]
        if let k = info.knnTop1 { meta["knn_top1"] = String(k) }
        if info.evalDue { meta["eval_due"] = "true" }
        return SafeTensorsFile(tensors: tensors, metadata: meta)
    }

    /// Writes durably (temporary file, fsync, rename, fsync of the folder) and records the
    /// SHA-256 beside it as `<name>.sha256` (`sha256sum` format). Returns the digest.
    @discardableResult
    public static func write(_ file: SafeTensorsFile, to url: URL) throws -> String {
        try file.write(to: url)
        let digest = try SHA256.hex(fileAt: url)
        let side = url.appendingPathExtension("sha256")
        try DurableFile.write(Data("\(digest)  \(url.lastPathComponent)\n".utf8), to: side)
        return digest
    }

    /// The SHA-256 recorded beside a checkpoint, if any.
    public static func recordedDigest(of url: URL) -> String? {
        guard let text = try? String(contentsOf: url.appendingPathExtension("sha256"), encoding: .utf8) else { return nil }
        return text.split(separator: " ").first.map(String.init)
    }

    /// Whether the file's digest matches the recorded one (false when none is recorded).
    public static func verify(_ url: URL) -> Bool {
        guard let recorded = recordedDigest(of: url), let actual = try? SHA256.hex(fileAt: url) else { return false }
        return recorded == actual
    }

    public static func info(of file: SafeTensorsFile) throws -> CheckpointInfo {
        guard file.metadata["format"] == formatVersion else {
            throw SafeTensorsError(.badHeader, "not a mocod checkpoint (format \(file.metadata["format"] ?? "missing"))")
        }
        guard let specText = file.metadata["spec"] else { throw SafeTensorsError(.badHeader, "checkpoint has no job spec") }
        let spec: JobSpec
        do { spec = try JobSpec.parse(Data(specText.utf8)) } catch {
            throw SafeTensorsError(.badHeader, "checkpoint's job spec is invalid: \(error)")
        }
        func int(_ k: String) throws -> Int {
            guard let t = file[k], let v = try t.int64s().first else { throw SafeTensorsError(.missingKey, "checkpoint lacks \(k)") }
            return Int(v)
        }
        return CheckpointInfo(step: try int("step"), epoch: try int("epoch"), knnTop1: file.metadata["knn_top1"].flatMap(Double.init),
                              spec: spec, created: file.metadata["created"].flatMap { ISO8601DateFormatter().date(from: $0) } ?? Date(),
                              evalDue: file.metadata["eval_due"] == "true")
    }

    /// Restores model, optimizer and generator from a checkpoint file image.
    public static func restore(_ file: SafeTensorsFile, model: any TrainingMethod, optimizer: any Optimizer, rng: inout SeededGenerator) throws -> CheckpointInfo {
        let info = try info(of: file)
        let all = file.byName
        try model.restore(from: all, optimizer: optimizer)
        guard let r = try all["rng.shuffle"]?.int64s(), r.count == 4 else { throw SafeTensorsError(.missingKey, "checkpoint lacks rng.shuffle") }
        rng.state = (UInt64(bitPattern: r[0]), UInt64(bitPattern: r[1]), UInt64(bitPattern: r[2]), UInt64(bitPattern: r[3]))
        return info
    }

    /// The parts of a checkpoint that evaluating, embedding or exporting its query encoder needs:
    /// the `encoder_q.*` tensors, the `step` and `epoch` that `info(of:)` reads, and the metadata.
    /// The key encoder, queue and momentum buffers (two thirds of the file and more) are not read.
    public static func readQueryEncoder(from url: URL) throws(SafeTensorsError) -> SafeTensorsFile {
        try SafeTensorsFile.read(from: url) { $0.hasPrefix(queryPrefix) || $0 == "step" || $0 == "epoch" }
    }

    static let queryPrefix = "encoder_q."

    /// The query encoder alone (backbone and projection head, built as the checkpoint's spec
    /// builds it) holding the checkpoint's `encoder_q.*` tensors, in eval mode. No key encoder or
    /// queue is built.
    public static func queryEncoder(_ file: SafeTensorsFile, info: CheckpointInfo) throws(SafeTensorsError) -> ResNet {
        guard file.tensors.contains(where: { $0.name.hasPrefix(queryPrefix) }) else {
            throw SafeTensorsError(.missingKey, "checkpoint has no \(queryPrefix)* tensors: no query encoder to load")
        }
        let spec = info.spec
        // The initial values are all overwritten (strict load), so the seed does not matter.
        var rng = SeededGenerator(seed: 0)
        let encoder = Methods.makeEncoder(spec, rng: &rng)
        do { try encoder.loadStateDict(file.byName, prefix: queryPrefix, strict: true) } catch {
            throw SafeTensorsError(error.code, "query encoder: \(error.message)", file: error.file)
        }
        encoder.eval()
        return encoder
    }

    /// The encoder alone, with torchvision's keys (no `encoder_q.` prefix, no head), and the
    /// architecture and input normalization in `__metadata__`.
    public static func exportEncoder(_ file: SafeTensorsFile, mean: [Float], std: [Float]) throws -> SafeTensorsFile {
        let info = try info(of: file)
        let prefix = queryPrefix
        let tensors = file.tensors.filter { $0.name.hasPrefix(prefix) && !$0.name.hasPrefix(prefix + "fc.") }
            .map { (name: String($0.name.dropFirst(prefix.count)), tensor: $0.tensor) }
        func json(_ v: [Float]) -> String { "[" + v.map { String(Double($0)) }.joined(separator: ", ") + "]" }
        let m = info.spec.model
        return SafeTensorsFile(tensors: tensors, metadata: [
            "format": "mocod-encoder-1", "arch": m.arch.rawValue, "stem": m.stem.rawValue, "width": String(m.width),
            "in_channels": String(m.in_channels), "feature_dim": String(info.spec.resnetConfig.featureDimension),
            "mean": json(mean), "std": json(std), "image_size": String(info.spec.augment.size),
            "step": String(info.step), "epoch": String(info.epoch), "spec": info.spec.canonicalJSON(),
        ])
    }
}

/// The checkpoints of a run and their retention: the newest `keepLast` plus the `keepBest` by kNN.
public struct CheckpointStore: Sendable {
    public let directory: URL
    public let keepLast: Int
    public let keepBest: Int

    public init(directory: URL, keepLast: Int, keepBest: Int) {
        self.directory = directory; self.keepLast = keepLast; self.keepBest = keepBest
    }

    public struct Entry: Sendable, Equatable {
        public var url: URL
        public var step: Int
        public var epoch: Int
        public var knnTop1: Double?
    }

    /// Checkpoints on disk, oldest first (by step), read from their headers.
    public func list() -> [Entry] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasPrefix("ckpt-") && $0.hasSuffix(".safetensors") }.compactMap { name -> Entry? in
            let url = directory.appendingPathComponent(name)
            guard let header = try? SafeTensorsFile.readHeader(from: url),
                  let step = header.metadata["step"].flatMap(Int.init), let epoch = header.metadata["epoch"].flatMap(Int.init) else { return nil }
            return Entry(url: url, step: step, epoch: epoch, knnTop1: header.metadata["knn_top1"].flatMap(Double.init))
        }.sorted { $0.step < $1.step }
    }

    /// Deletes checkpoints outside the retention policy (and their digests).
    public func prune() {
        let all = list()
        var keep = Set(all.suffix(keepLast).map(\.url))
        let best = all.filter { $0.knnTop1 != nil }.sorted { ($0.knnTop1!, $0.step) > ($1.knnTop1!, $1.step) }.prefix(keepBest)
        keep.formUnion(best.map(\.url))
        for e in all where !keep.contains(e.url) {
            try? FileManager.default.removeItem(at: e.url)
            try? FileManager.default.removeItem(at: e.url.appendingPathExtension("sha256"))
        }
    }

    /// The newest checkpoint whose digest matches (a corrupt one is skipped for the one before).
    public func latestValid() -> Entry? {
        list().reversed().first { Checkpoint.verify($0.url) }
    }

    /// Removes temporary files a crash may have left.
    public func removeLeftovers() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for n in names where n.hasPrefix(".") && n.contains(".tmp-") {
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(n))
        }
    }
}
