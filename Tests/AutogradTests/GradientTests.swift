import Kernels
import Autograd
import TestSupport
import Testing

/// Every primitive's backward against central finite differences on small random inputs.
/// fp32 differences with h = 1e-2 carry ~1e-3 relative noise; 2e-2 is the stated tolerance.
@Suite(.serialized) struct GradientTests {
    static let tolerance: Float = 2e-2

    func rand(_ shape: [Int], _ seed: UInt64, grad: Bool = true) -> Tensor {
        var rng = SeededGenerator(seed: seed)
        return Tensor.randn(shape, using: &rng, requiresGrad: grad)
    }

    func expectGood(_ check: GradientCheck, _ what: String) {
        #expect(check.worstRelativeError < Self.tolerance, "\(what): \(check.report.last ?? "")")
    }

    @Test(arguments: [(1, 1, false), (2, 1, true), (1, 0, false), (2, 3, false)])
    func convolution(stride: Int, padding: Int, bias: Bool) {
        let k = padding == 3 ? 7 : (padding == 0 ? 1 : 3)
        let x = rand([2, 3, 7, 7], 1), w = rand([4, 3, k, k], 2)
        let b = bias ? rand([4], 3) : nil
        let check = gradientCheck([x, w] + (b.map { [$0] } ?? [])) { t in
            conv2d(t[0], t[1], bias: bias ? t[2] : nil, stride: stride, padding: padding)
        }
        expectGood(check, "conv2d s\(stride) p\(padding)")
    }

    @Test(arguments: [1, 2])
    func batchNormTraining(groups: Int) {
        let x = rand([4, 3, 3, 3], 4), w = rand([3], 5), b = rand([3], 6)
        let rm = Tensor.zeros([3]), rv = Tensor.ones([3])
        let check = gradientCheck([x, w, b]) { t in
            batchNorm(t[0], weight: t[1], bias: t[2], runningMean: rm, runningVar: rv, training: true, groups: groups)
        }
        expectGood(check, "batchNorm groups \(groups)")
    }

    /// Finite differences are unreliable across ReLU's kink, so the fused paths are checked
    /// against the unfused ops (each of which passes its own difference test).
    @Test func fusedReLUMatchesUnfused() {
        let x = rand([4, 16, 3, 3], 7), w = rand([16], 8), b = rand([16], 9), gy = rand([4, 16, 3, 3], 10, grad: false)
        func run(_ fused: Bool) -> [[Float]] {
            x.grad = nil; w.grad = nil; b.grad = nil
            let rm = Tensor.zeros([16]), rv = Tensor.ones([16])
            let y = fused
                ? batchNorm(x, weight: w, bias: b, runningMean: rm, runningVar: rv, training: true, fuseReLU: true)
                : relu(batchNorm(x, weight: w, bias: b, runningMean: rm, runningVar: rv, training: true))
            y.backward(gy)
            return [y.toArray(), x.grad!.toArray(), w.grad!.toArray(), b.grad!.toArray(), rm.toArray(), rv.toArray()]
        }
        for (f, u) in zip(run(true), run(false)) { #expect(closeness(f, u, rtol: 1e-5, atol: 1e-6).ok) }

        let a = rand([2, 16, 4, 4], 11), c = rand([2, 16, 4, 4], 12), g2 = rand([2, 16, 4, 4], 13, grad: false)
        func runAdd(_ fused: Bool) -> [[Float]] {
            a.grad = nil; c.grad = nil
            let y = fused ? add(a, c, thenReLU: true) : relu(add(a, c))
            y.backward(g2)
            return [y.toArray(), a.grad!.toArray(), c.grad!.toArray()]
        }
        for (f, u) in zip(runAdd(true), runAdd(false)) { #expect(closeness(f, u, rtol: 1e-6, atol: 0).ok) }
    }

    @Test func batchNormEval() {
        let x = rand([4, 3, 3, 3], 10), w = rand([3], 11), b = rand([3], 12)
        let rm = Tensor(shape: [3], data: [0.1, -0.2, 0.3]), rv = Tensor(shape: [3], data: [0.5, 1.5, 2])
        let check = gradientCheck([x, w, b]) { t in
            batchNorm(t[0], weight: t[1], bias: t[2], runningMean: rm, runningVar: rv, training: false)
        }
        expectGood(check, "batchNorm eval")
    }

    @Test func batchNorm1d() {
        let x = rand([6, 5], 13), w = rand([5], 14), b = rand([5], 15)
        let rm = Tensor.zeros([5]), rv = Tensor.ones([5])
        let check = gradientCheck([x, w, b]) { t in
            batchNorm(t[0], weight: t[1], bias: t[2], runningMean: rm, runningVar: rv, training: true)
        }
        expectGood(check, "batchNorm1d")
    }

    @Test func reluAndResidualAdd() {
        // Inputs kept at least 0.1 away from ReLU's kink, so h = 1e-2 never crosses it.
        let a = rand([2, 3, 4, 4], 16), b = rand([2, 3, 4, 4], 17)
        a.withUnsafeMutableFloats { f in for i in 0..<a.count { f[i] = f[i] < 0 ? f[i] - 0.1 : f[i] + 0.1 } }
        expectGood(gradientCheck([a]) { relu($0[0]) }, "relu")
        expectGood(gradientCheck([a, b]) { $0[0] - $0[1] }, "sub")
    }

    @Test func pooling() {
        let x = rand([2, 3, 9, 9], 18)
        expectGood(gradientCheck([x]) { maxPool2d($0[0], kernel: 3, stride: 2, padding: 1) }, "maxpool")
        expectGood(gradientCheck([x]) { globalAvgPool($0[0]) }, "avgpool")
    }

    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func matmulTransposes(ta: Bool, tb: Bool) {
        let a = rand(ta ? [4, 3] : [3, 4], 19), b = rand(tb ? [5, 4] : [4, 5], 20)
        expectGood(gradientCheck([a, b]) { matmul($0[0], $0[1], transposeA: ta, transposeB: tb) }, "matmul \(ta) \(tb)")
    }

    @Test func linearLayer() {
        let x = rand([4, 6], 21), w = rand([5, 6], 22), b = rand([5], 23)
        expectGood(gradientCheck([x, w, b]) { linear($0[0], weight: $0[1], bias: $0[2]) }, "linear")
    }

    @Test func normalizeAndLoss() {
        let x = rand([4, 7], 24)
        expectGood(gradientCheck([x]) { l2Normalized($0[0]) }, "l2norm")
        let logits = rand([5, 9], 25)
        expectGood(gradientCheck([logits]) { crossEntropy($0[0], targets: [0, 3, 8, 1, 0]) }, "crossEntropy")
    }

    @Test func shapeAndScalarOps() {
        let a = rand([3, 4], 26), b = rand([2, 4], 27), c = rand([3, 2], 28)
        expectGood(gradientCheck([a, b]) { concat([$0[0], $0[1]], axis: 0) }, "concat axis 0")
        expectGood(gradientCheck([a, c]) { concat([$0[0], $0[1]], axis: 1) }, "concat axis 1")
        expectGood(gradientCheck([a]) { sum($0[0] * 3) }, "sum/scale")
        expectGood(gradientCheck([a]) { mean($0[0]) }, "mean")
        expectGood(gradientCheck([a]) { sumRows($0[0]) }, "sumRows")
        let a2 = rand([3, 4], 29)
        expectGood(gradientCheck([a, a2]) { multiply($0[0], $0[1]) }, "multiply")
        let x = rand([2, 3, 2, 2], 30)
        expectGood(gradientCheck([x]) { $0[0].reshaped([2, -1]) }, "reshape")
        let rows = rand([4, 3], 35)
        expectGood(gradientCheck([rows]) { gatherRows($0[0], [2, 0, 3, 1, 2]) }, "gatherRows")
    }

    @Test func convThroughBlockedLayouts() {
        // conv -> BN -> conv -> residual add -> pool: activations stay in oneDNN's layout between ops.
        let x = rand([2, 16, 6, 6], 31), w1 = rand([16, 16, 3, 3], 32), w2 = rand([16, 16, 3, 3], 33)
        let g = Tensor.ones([16], requiresGrad: true), b = Tensor.zeros([16], requiresGrad: true)
        let rm = Tensor.zeros([16]), rv = Tensor.ones([16])
        let check = gradientCheck([x, w1, w2, g, b], step: 1e-2) { t in
            let h = batchNorm(conv2d(t[0], t[1], padding: 1), weight: t[3], bias: t[4], runningMean: rm, runningVar: rv,
                              training: true)
            return globalAvgPool(add(conv2d(h, t[2], padding: 1), t[0]))
        }
        expectGood(check, "conv block")
    }

    @Test func noGradRecordsNothing() {
        let x = rand([2, 3], 34)
        let y = GradMode.withNoGrad { l2Normalized(x) }
        #expect(!y.requiresGrad)
        #expect(l2Normalized(x).requiresGrad)
    }
}
