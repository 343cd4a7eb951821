import Autograd
import Foundation
import Kernels

/// One batch: `views` buffers of `batch x channels x size x size` floats, and which images they are.
public struct Batch: Sendable {
    /// Position of the batch within its epoch.
    public let index: Int
    public let indices: [Int]
    public let labels: [Int]?
    public let views: [Buffer]
}

/// Deterministic seeds for everything random in the data stream.
public enum StreamSeed {
    /// A well-mixed 64-bit seed from several parts (SplitMix64 finalizer over each part).
    public static func mix(_ parts: UInt64...) -> UInt64 {
        var h: UInt64 = 0x243F_6A88_85A3_08D3
        for p in parts {
            h ^= p &+ 0x9E37_79B9_7F4A_7C15 &+ (h << 6) &+ (h >> 2)
            h = (h ^ (h >> 30)) &* 0xBF58_476D_1CE4_E5B9
            h = (h ^ (h >> 27)) &* 0x94D0_49BB_1331_11EB
            h ^= h >> 31
        }
        return h
    }
}

/// Batches of augmented views, assembled by worker threads ahead of the consumer.
///
/// The order of images in an epoch is a function of `(seed, epoch)` and each view of each
/// image a function of `(seed, epoch, image, view)`, so the stream is the same whatever the
/// number of workers, and an epoch can restart at any batch (exact resume).
public final class BatchLoader: Sendable {
    public let dataset: ImageDataset
    public let augment: AugmentConfig
    public let batchSize: Int
    public let views: Int
    public let seed: UInt64
    public let shuffle: Bool
    public let workers: Int
    public let prefetch: Int
    /// The positions of each (global) batch this loader assembles: all of them, or one rank's
    /// block under data parallelism. The views of a position are the same either way.
    public let shard: Range<Int>

    public init(dataset: ImageDataset, augment: AugmentConfig, batchSize: Int, views: Int = 2, seed: UInt64,
                shuffle: Bool = true, workers: Int = 1, prefetch: Int = 4, shard: Range<Int>? = nil) {
        precondition(batchSize > 0 && views > 0 && workers >= 0)
        let shard = shard ?? 0..<batchSize
        precondition(!shard.isEmpty && shard.lowerBound >= 0 && shard.upperBound <= batchSize, "shard \(shard) outside a batch of \(batchSize)")
        self.dataset = dataset; self.augment = augment; self.batchSize = batchSize; self.views = views
        self.seed = seed; self.shuffle = shuffle; self.workers = workers; self.prefetch = max(1, prefetch)
        self.shard = shard
    }

    /// Full batches per epoch (the last partial batch is dropped, as `drop_last=True`).
    public var batchesPerEpoch: Int { dataset.count / batchSize }
    /// Images per assembled batch: the shard's size.
    public var localBatchSize: Int { shard.count }
    public var floatsPerView: Int { localBatchSize * dataset.channels * augment.size * augment.size }

    /// The order of images in `epoch`: a Fisher–Yates shuffle seeded by `(seed, epoch)`.
    public func order(epoch: Int) -> [Int] {
        var idx = Array(0..<dataset.count)
        guard shuffle else { return idx }
        var rng = SeededGenerator(seed: StreamSeed.mix(seed, UInt64(epoch), 0x5EED))
        idx.fisherYatesShuffle(using: &rng)
        return idx
    }

    /// Assembles batch `b` of an epoch whose order is `order` (pure; any thread).
    public func makeBatch(epoch: Int, order: [Int], b: Int) -> Batch {
        let indices = Array(order[(b * batchSize + shard.lowerBound)..<(b * batchSize + shard.upperBound)])
        let per = dataset.channels * augment.size * augment.size
        let buffers = (0..<views).map { _ in Buffer(byteCount: floatsPerView * 4) }
        for (slot, image) in indices.enumerated() {
            let source = Augment.source(dataset, image, augment)   // loaded (decoded) once for all its views
            for v in 0..<views {
                var rng = SeededGenerator(seed: StreamSeed.mix(seed, UInt64(epoch), UInt64(image), UInt64(v)))
                buffers[v].withUnsafeMutableFloats { Augment.view(of: source, augment, rng: &rng, into: $0.baseAddress! + slot * per) }
            }
        }
        return Batch(index: b, indices: indices, labels: dataset.labels.map { l in indices.map { l[$0] } }, views: buffers)
    }

    /// An iterator over `epoch` starting at batch `start`; workers begin at once.
    public func epoch(_ epoch: Int, startingAt start: Int = 0) -> EpochStream {
        EpochStream(loader: self, epoch: epoch, start: start)
    }
}

/// The batches of one epoch in order. Reading blocks only when the workers are behind; that
/// time is counted in `waitSeconds` (the data-wait share of a step). Dropping the stream stops
/// its workers.
public final class EpochStream: Sendable {
    private let state: StreamState

    init(loader: BatchLoader, epoch: Int, start: Int) {
        state = StreamState(loader: loader, epoch: epoch, start: start)
        for _ in 0..<loader.workers {
            let s = state
            let t = Thread { s.work() }
            t.name = "mocod-data"
            t.start()
        }
    }

    /// The next batch, or nil at the end of the epoch.
    public func next() -> Batch? { state.next() }

    /// Seconds `next()` has spent waiting for workers.
    public var waitSeconds: Double { state.waitSeconds }

    deinit { state.cancel() }
}

/// The queue between the workers and the consumer of one epoch.
final class StreamState: @unchecked Sendable {
    /// Safe to share: every mutable field is read and written under `cond`'s lock.
    private let cond = NSCondition()
    private var ready: [Int: Batch] = [:]
    private var nextToTake: Int
    private var nextToMake: Int
    private var cancelled = false
    private var waited: Double = 0
    private let end: Int
    let loader: BatchLoader
    let epoch: Int
    let order: [Int]

    init(loader: BatchLoader, epoch: Int, start: Int) {
        self.loader = loader
        self.epoch = epoch
        self.order = loader.order(epoch: epoch)
        self.end = loader.batchesPerEpoch
        self.nextToTake = start
        self.nextToMake = start
    }

    var waitSeconds: Double { cond.lock(); defer { cond.unlock() }; return waited }

    func work() {
        while true {
            cond.lock()
            while !cancelled && nextToMake < end && nextToMake >= nextToTake + loader.prefetch { cond.wait() }
            if cancelled || nextToMake >= end { cond.unlock(); return }
            let b = nextToMake
            nextToMake += 1
            cond.unlock()
            let batch = loader.makeBatch(epoch: epoch, order: order, b: b)
            cond.lock()
            ready[b] = batch
            cond.broadcast()
            cond.unlock()
        }
    }

    func next() -> Batch? {
        cond.lock()
        defer { cond.unlock() }
        guard nextToTake < end else { return nil }
        let b = nextToTake
        if loader.workers == 0 {
            // No workers: build it here (the whole build time counts as waiting).
            cond.unlock()
            let t0 = Date()
            let batch = loader.makeBatch(epoch: epoch, order: order, b: b)
            let dt = Date().timeIntervalSince(t0)
            cond.lock()
            waited += dt
            nextToTake += 1
            nextToMake = max(nextToMake, nextToTake)
            return batch
        }
        if ready[b] == nil {
            let t0 = Date()
            while ready[b] == nil && !cancelled { cond.wait() }
            waited += Date().timeIntervalSince(t0)
        }
        let batch = ready.removeValue(forKey: b)
        nextToTake += 1
        cond.broadcast()
        return batch
    }

    func cancel() {
        cond.lock()
        cancelled = true
        cond.broadcast()
        cond.unlock()
    }
}
