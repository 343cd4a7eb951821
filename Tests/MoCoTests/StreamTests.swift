import Autograd
import Data
import Foundation
@testable import MoCo
import NN
import TestSupport
import Testing

/// Datasets larger than memory: image folders and tar shards decoded as views need them, bad
/// images skipped and counted, the error rate's limit, exact resume, a byte-bounded cache.
@Suite(.serialized) struct StreamTests {
    /// `n` JPEGs (`width x height`, RGB, each a different pattern) in two class folders, plus
    /// the `bad` files given (name: bytes) in the first class; returns the data root.
    static func makeFolder(_ n: Int, width: Int = 24, height: Int = 16, bad: [String: [UInt8]] = [:]) throws -> URL {
        let root = temporaryDirectory()
        for c in ["a", "b"] { try FileManager.default.createDirectory(at: root.appendingPathComponent("photos/\(c)"), withIntermediateDirectories: true) }
        for i in 0..<n {
            var px = [UInt8](repeating: 0, count: width * height * 3)
            for y in 0..<height { for x in 0..<width { for ch in 0..<3 { px[(y * width + x) * 3 + ch] = UInt8((x * (7 + i) + y * (3 + ch) * (i % 5 + 1) + i * 29) % 256) } } }
            let jpg = try Readers.encodeJPEG(px, width: width, height: height, channels: 3, quality: 95)
            try Data(jpg).write(to: root.appendingPathComponent("photos/\(i % 2 == 0 ? "a" : "b")/img\(String(format: "%03d", i)).jpg"))
        }
        for (name, bytes) in bad { try Data(bytes).write(to: root.appendingPathComponent("photos/a/\(name)")) }
        return root
    }

    static func spec(format: String = "folder", path: String = "photos", epochs: Int = 2, maxErrorRate: Double = 0.5, everySteps: Int? = nil) -> JobSpec {
        try! JobSpec.parse(Data("""
        {"name": "stream", "data": {"format": "\(format)", "path": "\(path)", "cache_mb": 1, "max_error_rate": \(maxErrorRate)},
         "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 3, "dim": 8},
         "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},
         "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 8, "epochs": \(epochs), "lr": 0.05, "lr_scaling": "none"},
         "checkpoint": {"every_epochs": 1, "every_steps": \(everySteps.map(String.init) ?? "null"), "keep_last": 100}, "seed": 5, "threads": 1}
        """.utf8))
    }

    static func load(_ spec: JobSpec, _ root: URL) throws -> ImageDataset {
        try DataSources.load(spec.data, roots: [root.path], size: spec.augment.size, channels: spec.model.in_channels)
    }

    static func points(_ dir: URL) -> [MetricPoint] {
        let text = (try? String(contentsOf: dir.appendingPathComponent("metrics.jsonl"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(MetricPoint.self, from: Data($0.utf8)) }
    }

    /// A folder with one image of every bad kind among 24 (a zero-byte file, a non-image, a
    /// truncated JPEG, a decompression bomb's header, a file gone after indexing): training skips
    /// them, names each once in the log, counts them in the metrics (data_errors), and finishes.
    @Test func badImagesAreSkippedNamedAndCounted() throws {
        let whole = try Readers.encodeJPEG([UInt8](repeating: 90, count: 64 * 48 * 3), width: 64, height: 48, channels: 3)
        let root = try Self.makeFolder(19, bad: ["empty.jpg": [], "garbage.png": Array("not an image at all".utf8),
                                                 "truncated.jpg": Array(whole.prefix(whole.count / 2)),
                                                 "bomb.png": Fixtures.pngHeader(width: 100_000, height: 100_000), "gone.jpg": whole])
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root); try? FileManager.default.removeItem(at: out) }
        let spec = Self.spec()
        let train = try Self.load(spec, root)
        try FileManager.default.removeItem(at: root.appendingPathComponent("photos/a/gone.jpg"))   // unreadable once indexed
        #expect(train.count == 24 && train.stream != nil && train.pixels.isEmpty)
        var messages: [String] = []
        let outcome = try Trainer(spec: spec, train: train, eval: nil, outDirectory: out) { e in
            if case .message(let m) = e { messages.append(m) }
        }.run()
        #expect(outcome == .finished)
        let skipped = messages.filter { $0.hasPrefix("skipped an unusable image: ") }
        #expect(skipped.count == 5, "\(messages)")
        for (file, problem) in [("a/empty.jpg", "empty file"), ("a/garbage.png", "neither a PNG nor a JPEG"), ("a/truncated.jpg", "JPEG"),
                                ("a/bomb.png", "declares 100000x100000 pixels"), ("a/gone.jpg", "no such file")] {
            #expect(skipped.filter { $0.contains("\(file): ") && $0.contains(problem) }.count == 1, "\(file): \(skipped)")
        }
        let steps = Self.points(out).filter { $0.kind == .step }
        #expect(steps.count == 6 && steps.last?.data_errors == 5, "\(steps.map(\.data_errors))")
    }

    /// Past `data.max_error_rate` the job fails with the counts in its reason.
    @Test func tooManyBadImagesFailTheJob() throws {
        let bad = Dictionary(uniqueKeysWithValues: (0..<4).map { ("bad\($0).jpg", [UInt8]([0xFF, 0xD8, 0xFF, 0x00])) })
        let root = try Self.makeFolder(12, bad: bad)
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root); try? FileManager.default.removeItem(at: out) }
        let spec = Self.spec(maxErrorRate: 0.1)
        let outcome = try Trainer(spec: spec, train: try Self.load(spec, root), eval: nil, outDirectory: out).run()
        guard case .failed(let reason) = outcome else { Issue.record("\(outcome)"); return }
        #expect(reason.contains("images tried could not be used") && reason.contains("more than data.max_error_rate (10.0%)"), "\(reason)")
        #expect(DataErrorLimit(rate: 0.01).exceeded(bad: 1, tried: 100, count: 1000) == nil, "at the limit is within it")
        #expect(DataErrorLimit(rate: 0.01).exceeded(bad: 2, tried: 100, count: 1000) != nil)
        #expect(DataErrorLimit(rate: 0.01).exceeded(bad: 5, tried: 99, count: 1000) == nil, "not judged before 100 tries")
        #expect(DataErrorLimit(rate: 0.01).exceeded(bad: 1, tried: 10, count: 20) != nil, "half of a small dataset")
    }

    /// Views are a function of (seed, epoch, index, view): stopping and resuming a streamed run
    /// gives the straight run's losses and parameters exactly (the cache only saves decoding).
    @Test func streamedResumeIsExact() throws {
        let root = try Self.makeFolder(24)
        let a = temporaryDirectory(), b = temporaryDirectory()
        defer { for d in [root, a, b] { try? FileManager.default.removeItem(at: d) } }
        let spec = Self.spec(epochs: 2, everySteps: 2)
        #expect(try Trainer(spec: spec, train: try Self.load(spec, root), eval: nil, outDirectory: a, workers: 2).run() == .finished)
        #expect(try Trainer(spec: spec, train: try Self.load(spec, root), eval: nil, outDirectory: b, workers: 1).run(stopAfterSteps: 2) == .stopped(step: 2))
        let t = Trainer(spec: spec, train: try Self.load(spec, root), eval: nil, outDirectory: b, workers: 0)
        #expect(try t.run(resume: t.store.list().last!.url) == .finished)
        let la = Self.points(a).compactMap(\.loss), lb = Self.points(b).compactMap(\.loss)
        #expect(la.count == 6 && la == lb)
    }

    /// The same images as tar shards (a WebDataset layout: key.jpg and key.cls, in the folder's
    /// order) train exactly as the folder does.
    @Test func tarShardsTrainAsTheFolderDoes() throws {
        let root = try Self.makeFolder(16)
        let a = temporaryDirectory(), b = temporaryDirectory()
        defer { for d in [root, a, b] { try? FileManager.default.removeItem(at: d) } }
        let folder = Self.spec()
        let index = try ImageIndex.folder(root.appendingPathComponent("photos").path)
        try FileManager.default.createDirectory(at: root.appendingPathComponent("shards"), withIntermediateDirectories: true)
        for s in 0..<2 {
            var tar = ShardWriter()
            for i in stride(from: s * 8, to: s * 8 + 8, by: 1) {
                let key = String(format: "s%05d", i)
                tar.add(key + ".jpg", try index.bytes(of: i))
                tar.add(key + ".cls", Array("\(index.labels![i])".utf8))
            }
            try Data(tar.finish()).write(to: root.appendingPathComponent("shards/train-00\(s).tar"))
        }
        let shards = Self.spec(format: "tar", path: "shards/train-{000..001}.tar")
        let tarData = try Self.load(shards, root)
        #expect(tarData.count == 16 && tarData.labels == index.labels)
        #expect(try Trainer(spec: folder, train: try Self.load(folder, root), eval: nil, outDirectory: a).run() == .finished)
        #expect(try Trainer(spec: shards, train: tarData, eval: nil, outDirectory: b).run() == .finished)
        let la = Self.points(a).compactMap(\.loss), lb = Self.points(b).compactMap(\.loss)
        #expect(la.count == 4 && la == lb)
    }

    /// Random-resized crops come from the whole image (a 24x16 photo, not its 8x8 center), the
    /// kNN path's center crop is the shorter side resized, and the cache keeps to its budget.
    @Test func viewsCropTheWholeImageAndTheCacheIsBounded() throws {
        let root = try Self.makeFolder(40, width: 120, height: 80)
        defer { try? FileManager.default.removeItem(at: root) }
        let index = try ImageIndex.folder(root.appendingPathComponent("photos").path)
        // Views of 8 px: the 120x80 JPEGs are decoded at 1/4 in the DCT (30x20: the shorter side
        // keeps at least 2 x 8), which is what the cache holds.
        let each = 30 * 20 * 3, budget = 5 * each + 100
        let ds = ImageDataset(stream: ImageStream(index: index, root: nil, channels: 3, size: 8, cacheBytes: budget))
        let first = try #require(ds.stream?.image(0))
        #expect(first.width == 30 && first.height == 20)
        for i in 0..<ds.count { _ = ds.stream?.image(i) }
        #expect((ds.stream?.cachedBytes ?? 0) <= budget && (ds.stream?.cachedBytes ?? 0) == 5 * each)
        #expect(ds.centerCrop(3).count == 8 * 8 * 3)
        // Random-resized crops differ from one another and from the center crop (they see the whole image).
        var rng = SeededGenerator(seed: 1)
        let cfg = AugmentConfig(preset: .v2, size: 8, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25])
        var v1 = [Float](repeating: 0, count: 192), v2 = [Float](repeating: 0, count: 192)
        v1.withUnsafeMutableBufferPointer { Augment.view(ds, 3, cfg, rng: &rng, into: $0.baseAddress!) }
        v2.withUnsafeMutableBufferPointer { Augment.view(ds, 3, cfg, rng: &rng, into: $0.baseAddress!) }
        #expect(v1 != v2)
        // The DCT scale: the smallest of turbojpeg's factors keeping the shorter side at least minSide.
        #expect(ImageStream.scale(width: 1000, height: 800, minSide: 192) == (1, 4))
        #expect(ImageStream.scale(width: 300, height: 200, minSide: 192) == (1, 1))
        // Views of 16 px: 1/2 (60x40); of 40 px: whole (the shorter side is under 4 x 40); gray on request.
        let half = try #require(ImageStream(index: index, root: nil, channels: 1, size: 16, cacheBytes: 0).image(0))
        #expect(half.width == 60 && half.channels == 1)
        #expect(ImageStream(index: index, root: nil, channels: 3, size: 40, cacheBytes: 0).image(0)?.width == 120)
    }

    /// Each unusable sample counts once however many ranks report it; indexing problems count each.
    @Test func errorTallyCountsEachSampleOnce() {
        var tally = DataErrorTally()
        let a = DataErrorReport(sample: 3, message: "x.jpg: empty file"), cut = DataErrorReport(sample: nil, message: "s.tar: cut short")
        #expect(tally.add([a, cut, a]) == [a, cut])
        #expect(tally.add([a, DataErrorReport(sample: 5, message: "y.jpg: empty file")]).map(\.sample) == [5])
        #expect(tally.count == 3)
    }

    /// Under data parallelism a rank's loader decodes only its own block of each batch: over an
    /// epoch, rank 0 of 2 tries half the images (no decoded-image cache), and the two ranks
    /// together try each image once.
    @Test func eachRankDecodesOnlyItsShare() throws {
        let root = try Self.makeFolder(32)
        defer { try? FileManager.default.removeItem(at: root) }
        let index = try ImageIndex.folder(root.appendingPathComponent("photos").path)
        let cfg = AugmentConfig(preset: .v2, size: 8, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25])
        var tried: [Int] = []
        for shard in [0..<4, 4..<8] {
            let ds = ImageDataset(stream: ImageStream(index: index, root: nil, channels: 3, size: 8, cacheBytes: 0))
            let loader = BatchLoader(dataset: ds, augment: cfg, batchSize: 8, seed: 1, workers: 2, shard: shard)
            let epoch = loader.epoch(0)
            var images = 0
            while let b = epoch.next() { images += b.indices.count }
            #expect(images == 16)
            tried.append(ds.stream?.errorCounts.tried ?? -1)
        }
        #expect(tried == [16, 16])
    }
}

/// A minimal ustar writer for shards.
struct ShardWriter {
    private var out: [UInt8] = []
    mutating func add(_ name: String, _ data: [UInt8]) {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ s: String, _ at: Int) { for (i, b) in s.utf8.enumerated() { h[at + i] = b } }
        put(name, 0); put("0000644", 100); put("0000000", 108); put("0000000", 116)
        put(String(format: "%011o", data.count), 124); put("00000000000", 136)
        h[156] = UInt8(ascii: "0"); put("ustar", 257); put("00", 263)
        for i in 148..<156 { h[i] = 32 }
        put(String(format: "%06o", h.reduce(0) { $0 + Int($1) }), 148); h[154] = 0; h[155] = 32
        out += h + data + [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
    }
    func finish() -> [UInt8] { out + [UInt8](repeating: 0, count: 1024) }
}
