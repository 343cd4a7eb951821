import Autograd
@testable import Data
import Foundation
import Testing

@Suite struct AugmentTests {
    func dataset(_ n: Int, channels: Int = 1, size: Int = 12) -> ImageDataset {
        var rng = SeededGenerator(seed: 5)
        let pixels = (0..<(n * size * size * channels)).map { _ in UInt8(rng.next() % 256) }
        return ImageDataset(count: n, height: size, width: size, channels: channels, pixels: pixels, labels: (0..<n).map { $0 % 3 })
    }

    /// The augmented stream is a function of the seed alone, whatever the number of workers.
    @Test func streamIsIndependentOfWorkerCount() {
        for channels in [1, 3] {
            let ds = dataset(40, channels: channels)
            let cfg = AugmentConfig(preset: .v2, size: 10, mean: [0.5], std: [0.25])
            func epoch(_ workers: Int, start: Int = 0) -> [[Float]] {
                let loader = BatchLoader(dataset: ds, augment: cfg, batchSize: 8, views: 2, seed: 42, workers: workers, prefetch: 2)
                let stream = loader.epoch(3, startingAt: start)
                var out: [[Float]] = []
                while let b = stream.next() {
                    for v in b.views { out.append(v.withUnsafeFloats { Array($0[..<loader.floatsPerView]) }) }
                }
                return out
            }
            let reference = epoch(0)
            #expect(reference.count == 10)   // 5 batches x 2 views (40 / 8)
            #expect(epoch(1) == reference)
            #expect(epoch(3) == reference)
            // Restarting mid-epoch yields the same remaining batches (exact resume).
            #expect(epoch(2, start: 2) == Array(reference[4...]))
            // Another epoch differs.
            let loader = BatchLoader(dataset: ds, augment: cfg, batchSize: 8, seed: 42, workers: 0)
            #expect(loader.order(epoch: 3) != loader.order(epoch: 4))
        }
    }

    /// Under data parallelism each rank assembles only its block of every global batch; the
    /// blocks put together in rank order are the whole batch, bit for bit (same images, views,
    /// labels), so the data a job sees does not depend on the number of ranks.
    @Test func shardsTileTheGlobalBatch() {
        let ds = dataset(48)
        let cfg = AugmentConfig(preset: .v2, size: 10, mean: [0.5], std: [0.25])
        let full = BatchLoader(dataset: ds, augment: cfg, batchSize: 12, seed: 7, workers: 0)
        let parts = [0..<4, 4..<8, 8..<12].map { BatchLoader(dataset: ds, augment: cfg, batchSize: 12, seed: 7, workers: 2, shard: $0) }
        #expect(parts.allSatisfy { $0.batchesPerEpoch == full.batchesPerEpoch && $0.localBatchSize == 4 })
        let order = full.order(epoch: 1)
        for b in 0..<full.batchesPerEpoch {
            let whole = full.makeBatch(epoch: 1, order: order, b: b)
            let pieces = parts.map { $0.makeBatch(epoch: 1, order: order, b: b) }
            #expect(pieces.flatMap(\.indices) == whole.indices)
            #expect(pieces.flatMap { $0.labels ?? [] } == whole.labels)
            for v in 0..<2 {
                let joined = pieces.flatMap { p in p.views[v].withUnsafeFloats { Array($0[..<parts[0].floatsPerView]) } }
                #expect(joined == whole.views[v].withUnsafeFloats { Array($0[..<full.floatsPerView]) })
            }
        }
    }

    @Test func viewsDifferAndStayInRange() {
        let ds = dataset(4, channels: 3)
        let cfg = AugmentConfig(preset: .v2, size: 12, mean: [0, 0, 0], std: [1, 1, 1])
        var a = [Float](repeating: 0, count: 3 * 144), b = a
        var r1 = SeededGenerator(seed: 1), r2 = SeededGenerator(seed: 2)
        a.withUnsafeMutableBufferPointer { Augment.view(ds, 0, cfg, rng: &r1, into: $0.baseAddress!) }
        b.withUnsafeMutableBufferPointer { Augment.view(ds, 0, cfg, rng: &r2, into: $0.baseAddress!) }
        #expect(a != b)
        #expect(a.allSatisfy { $0 >= -1e-5 && $0 <= 1 + 1e-5 })
    }

    /// Preset none: identity at the stored size, then normalization.
    @Test func noAugmentationIsNormalizeOnly() {
        let ds = dataset(2, channels: 1, size: 5)
        let cfg = AugmentConfig(preset: .none, size: 5, mean: [0.5], std: [0.5])
        var out = [Float](repeating: 0, count: 25)
        var rng = SeededGenerator(seed: 0)
        out.withUnsafeMutableBufferPointer { Augment.view(ds, 1, cfg, rng: &rng, into: $0.baseAddress!) }
        let expected = ds.pixels[25..<50].map { (Float($0) / 255 - 0.5) / 0.5 }
        #expect(zip(out, expected).allSatisfy { abs($0 - $1) < 1e-5 })
    }

    @Test func cropBoxesRespectScaleAndBounds() {
        var rng = SeededGenerator(seed: 9)
        for _ in 0..<500 {
            let (top, left, h, w) = Augment.cropBox(height: 28, width: 28, scale: 0.2...1, ratio: (3.0 / 4)...(4.0 / 3), rng: &rng)
            #expect(top >= 0 && left >= 0 && top + h <= 28 && left + w <= 28)
            #expect(Double(h * w) >= 0.2 * 784 * 0.85)
        }
    }
}
