import Autograd
import Collectives
import Kernels
import NN

/// MoCo across the ranks of a communicator, as the official code runs it across GPUs (He et al.
/// 2019, section 3.3 and its `moco/builder.py`): each rank holds a copy of both encoders and the
/// queue and takes its own block of every global batch (`BatchShard`).
///
/// - The query encoder's batch norm sees the rank's block (no sync), as DDP does.
/// - Shuffle BN: the key batch is all-gathered, rank 0's permutation is broadcast, each rank
///   encodes its share of the shuffled batch, the keys are all-gathered and un-shuffled.
/// - The loss is the mean over the rank's block; gradients are all-reduced and divided by the
///   number of ranks, so every rank applies the gradient of the mean over the global batch.
/// - Keys are enqueued for the whole global batch, so every rank holds the same queue.
///
/// With N ranks of B images this is the single-process step on N·B images with `bn_splits` N
/// (split BN groups are the ranks' blocks), up to the order of floating-point sums.
extension MoCoModel {
    /// One data-parallel training step on this rank's blocks `x1`, `x2` (B images each).
    /// A non-finite loss (the ranks' mean, so every rank sees it) changes nothing.
    public func trainStep(_ x1: Tensor, _ x2: Tensor, optimizer: any Optimizer, rng: inout SeededGenerator,
                          group: Communicator) throws -> DataParallelStepResult {
        precondition(!symmetric, "the data-parallel step covers the asymmetric loss")
        momentumUpdate()
        let (loss, accuracy, std, keys) = try Autocast.with(precision) { () throws -> (Tensor, Float, Float, Tensor) in
            let q = l2Normalized(encoderQ(x1))
            let (local, global) = try distributedKeys(x2, group: group, rng: &rng)
            let (loss, accuracy) = contrastiveLoss(q, local)
            return (loss, accuracy, featureStd(q), global)
        }
        var value = [loss.item]
        try group.allReduceSum(&value)
        let mean = value[0] / Float(group.size)
        var result = DataParallelStepResult(loss: mean, instanceAccuracy: accuracy, featureStd: std)
        guard mean.isFinite else { return result }
        optimizer.zeroGrad()
        loss.backward()
        result.allReduce = try averageGradients(optimizer.parameters, buffers: runningStatistics, group: group)
        optimizer.step()
        enqueue(keys)
        return result
    }

    /// Keys of this rank's block under shuffle BN across ranks: `local` (B x dim, the block's
    /// images in order) and `global` (N·B x dim, every rank's block in rank order, to enqueue).
    func distributedKeys(_ x: Tensor, group: Communicator, rng: inout SeededGenerator) throws -> (local: Tensor, global: Tensor) {
        let b = x.shape[0], n = b * group.size
        let all = try gathered(x, group)                               // N·B images, rank order
        var perm = Array(0..<n)
        perm.fisherYatesShuffle(using: &rng)
        var shared = perm.map(Int32.init)
        try group.broadcast(&shared, root: 0)                          // rank 0's permutation
        perm = shared.map(Int.init)
        let mine = Array(perm[(group.rank * b)..<((group.rank + 1) * b)])
        let k = GradMode.withNoGrad { l2Normalized(encoderK(gatherRows(all, mine))) }
        let shuffled = try gathered(k, group)                          // keys in shuffled order
        var inverse = perm
        for (pos, i) in perm.enumerated() { inverse[i] = pos }
        let global = gatherRows(shuffled, inverse)                     // original order
        return (gatherRows(global, Array((group.rank * b)..<((group.rank + 1) * b))), global)
    }

    /// Both encoders' batch-norm running statistics. Each rank updates them from its own block;
    /// the update is linear, so their mean across ranks is what one process with one split per
    /// rank keeps (DDP instead copies rank 0's, which saw only its block).
    var runningStatistics: [Tensor] {
        (encoderQ.stateEntries() + encoderK.stateEntries()).compactMap { if case .buffer(_, let t) = $0 { t } else { nil } }
    }

    /// Every parameter's gradient, and every tensor of `buffers`, summed across ranks and divided
    /// by their number: packed into one bucket (a pooled buffer, so no step after the first
    /// allocates it), all-reduced in one call, and unpacked.
    func averageGradients(_ parameters: [Tensor], buffers: [Tensor] = [], group: Communicator) throws -> AllReduceStats {
        let grads = parameters.compactMap(\.grad) + buffers
        let total = grads.reduce(0) { $0 + $1.count }
        let scale = 1 / Float(group.size)
        var elapsed = Duration.zero
        try Buffer(byteCount: 4 * total).withUnsafeMutableFloats { (pool: UnsafeMutableBufferPointer<Float>) throws in
            let bucket = UnsafeMutableBufferPointer(rebasing: pool[..<total])
            var offset = 0
            for g in grads {
                g.withUnsafeFloats { f in _ = UnsafeMutableBufferPointer(rebasing: bucket[offset..<(offset + g.count)]).update(fromContentsOf: f[..<g.count]) }
                offset += g.count
            }
            let started = ContinuousClock.now
            try group.allReduceSum(bucket)
            elapsed = ContinuousClock.now - started
            offset = 0
            for g in grads {
                let n = g.count
                g.withUnsafeMutableFloats { f in for i in 0..<n { f[i] = bucket[offset + i] * scale } }
                offset += n
            }
        }
        return AllReduceStats(bytes: total * 4, seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18)
    }

    /// The ranks' tensors of the same shape stacked along the first axis in rank order.
    func gathered(_ t: Tensor, _ group: Communicator) throws -> Tensor {
        let all = try group.allGather(t.toArray())
        return Tensor(shape: [t.shape[0] * group.size] + t.shape.dropFirst(), data: all)
    }
}

/// One data-parallel step: the global batch's loss (the ranks' mean), this rank's instance
/// accuracy and feature std, and the gradient all-reduce's cost.
public struct DataParallelStepResult: Sendable {
    public var loss: Float
    public var instanceAccuracy: Float
    public var featureStd: Float
    public var allReduce = AllReduceStats()
}

/// What one step's gradient all-reduce moved (bytes per rank) and how long it took.
public struct AllReduceStats: Sendable, Equatable {
    public var bytes = 0
    public var seconds = 0.0
    public init(bytes: Int = 0, seconds: Double = 0) { self.bytes = bytes; self.seconds = seconds }
}
