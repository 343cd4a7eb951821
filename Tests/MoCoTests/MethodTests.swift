import Autograd
import Data
import Foundation
import Kernels
@testable import MoCo
import NN
import TestSupport
import Testing

func tinyModel(queue: Int = 16, dim: Int = 8, splits: Int = 1, symmetric: Bool = false, seed: UInt64 = 1) -> MoCoModel {
    var rng = SeededGenerator(seed: seed)
    return MoCoModel(config: ResNetConfig(arch: .resnet18, stem: .cifar, width: 4, inChannels: 1, numClasses: dim),
                     mlpHidden: 16, queueSize: queue, momentum: 0.9, temperature: 0.2, bnSplits: splits, symmetric: symmetric, rng: &rng)
}

@Suite(.serialized) struct MethodTests {
    @Test func queueWrapsAround() {
        let m = tinyModel(queue: 12, dim: 2)
        for round in 0..<5 {
            let keys = Tensor(shape: [4, 2], data: (0..<8).map { Float(round * 100 + $0) })
            let at = m.queuePointer
            m.enqueue(keys)
            #expect(m.queuePointer == (at + 4) % 12)
            let q = m.queue.toArray()
            #expect(Array(q[(at * 2)..<(at * 2 + 8)]) == keys.toArray())
        }
        #expect(m.queuePointer == 8)   // 5 x 4 = 20 = 12 + 8
    }

    @Test func momentumUpdateMath() {
        let m = tinyModel()
        let q = m.encoderQ.parameters(), k = m.encoderK.parameters()
        #expect(zip(q, k).allSatisfy { $0.toArray() == $1.toArray() })   // the key encoder starts as a copy
        // Move the query encoder, then one EMA step: k ← 0.9 k + 0.1 q.
        var rng = SeededGenerator(seed: 3)
        for p in q { p.assign(Tensor.randn(p.shape, using: &rng)) }
        let before = k.map { $0.toArray() }
        m.momentumUpdate()
        for (i, p) in k.enumerated() {
            let expected = zip(before[i], q[i].toArray()).map { $0 * 0.9 + $1 * (1 - 0.9) }
            #expect(closeness(p.toArray(), expected, rtol: 1e-6, atol: 1e-7).ok)
        }
    }

    /// InfoNCE on a hand-computed case: 2 queries, a queue of 2, T = 0.5.
    @Test func infoNCEHandComputed() {
        var rng = SeededGenerator(seed: 1)
        let m = MoCoModel(config: ResNetConfig(arch: .resnet18, stem: .cifar, width: 4, inChannels: 1, numClasses: 2),
                          mlpHidden: 4, queueSize: 2, momentum: 0.9, temperature: 0.5, bnSplits: 1, symmetric: false, rng: &rng)
        m.queue.assign(Tensor(shape: [2, 2], data: [1, 0, 0, 1]))
        let q = Tensor(shape: [2, 2], data: [1, 0, 0.6, 0.8], requiresGrad: true)
        let k = Tensor(shape: [2, 2], data: [0.6, 0.8, 0.6, 0.8])
        let (loss, acc) = m.contrastiveLoss(q, k)
        // Row 0: logits [0.6, 1, 0]/0.5 = [1.2, 2, 0]; row 1: [1, 0.6, 0.8]/0.5 = [2, 1.2, 1.6].
        func ce(_ l: [Double]) -> Double { log(l.map { exp($0) }.reduce(0, +)) - l[0] }
        let expected = (ce([1.2, 2, 0]) + ce([2, 1.2, 1.6])) / 2
        #expect(abs(Double(loss.item) - expected) < 1e-5)
        #expect(acc == 0.5)   // the positive is ranked first for query 1 only
    }

    @Test func shuffleThenUnshuffleIsIdentity() {
        var rng = SeededGenerator(seed: 4)
        let x = Tensor.randn([6, 3], using: &rng)
        let perm = [3, 0, 5, 1, 4, 2]
        var inverse = perm
        for (pos, i) in perm.enumerated() { inverse[i] = pos }
        #expect(gatherRows(gatherRows(x, perm), inverse).toArray() == x.toArray())
        // With one BN group the statistics ignore order, so shuffled keys equal unshuffled ones.
        let m = tinyModel(splits: 1)
        let images = Tensor.randn([8, 1, 8, 8], using: &rng)
        var shuffleRNG = SeededGenerator(seed: 7)
        let keys = m.keys(images, rng: &shuffleRNG).toArray()
        let direct = GradMode.withNoGrad { l2Normalized(m.encoderK(images)) }.toArray()
        #expect(closeness(keys, direct, rtol: 1e-4, atol: 1e-5).ok)
    }

    @Test func symmetricLossEnqueuesBothViews() {
        let m = tinyModel(queue: 16, splits: 2, symmetric: true)
        var rng = SeededGenerator(seed: 5)
        let x1 = Tensor.randn([4, 1, 8, 8], using: &rng), x2 = Tensor.randn([4, 1, 8, 8], using: &rng)
        let r = m.forward(x1, x2, rng: &rng)
        #expect(r.keys.shape == [8, 8])
        #expect(r.loss.item.isFinite)
    }
}
