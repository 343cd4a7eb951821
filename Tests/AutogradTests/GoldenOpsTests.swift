import Foundation
import Kernels
import NN
import Autograd
import TestSupport
import Testing

/// Ops against PyTorch 2.15 (fixtures from scripts/make_golden.py). Tolerance rtol 1e-4, atol 1e-5.
@Suite(.serialized) struct GoldenOpsTests {
    func expectClose(_ a: Tensor?, _ e: [Float], _ what: String, rtol: Float = 1e-4, atol: Float = 1e-5) {
        guard let a else { Issue.record("\(what): no value"); return }
        let c = closeness(a.toArray(), e, rtol: rtol, atol: atol)
        #expect(c.ok, "\(what): \(c)")
    }

    @Test(arguments: ["k3s1p1", "k3s2p1_bias", "k1s2p0", "k7s2p3"])
    func conv2dMatchesPyTorch(name: String) throws {
        let f = try Fixtures.golden("conv2d_\(name)")
        let stride = Int(f.metadata["stride"]!)!, padding = Int(f.metadata["padding"]!)!
        let x = f.t("x", requiresGrad: true), w = f.t("w", requiresGrad: true)
        let b = f["b"] != nil ? f.t("b", requiresGrad: true) : nil
        let y = conv2d(x, w, bias: b, stride: stride, padding: padding)
        expectClose(y, f.values("y"), "y")
        y.backward(f.t("gy"))
        expectClose(x.grad, f.values("gx"), "gx")
        expectClose(w.grad, f.values("gw"), "gw")
        if let b { expectClose(b.grad, f.values("gb"), "gb") }
    }

    /// SimCLR's NT-Xent (self-similarity masked with -inf in PyTorch, -1e9 here) and MoCo v3's
    /// symmetric loss, one process and a rank's block of gathered keys, with their gradients.
    @Test func methodLossesMatchPyTorch() throws {
        let f = try Fixtures.golden("method_losses")
        let z1 = f.t("ntxent.z1", requiresGrad: true), z2 = f.t("ntxent.z2", requiresGrad: true)
        let (nt, acc) = ntXentLoss(z1, z2, temperature: Float(f.metadata["ntxent_temperature"]!)!)
        expectClose(nt, f.values("ntxent.loss"), "NT-Xent")
        #expect(acc >= 0 && acc <= 1)
        nt.backward()
        expectClose(z1.grad, f.values("ntxent.gz1"), "NT-Xent dz1")
        expectClose(z2.grad, f.values("ntxent.gz2"), "NT-Xent dz2")

        let t = Float(f.metadata["v3_temperature"]!)!
        let q1 = f.t("v3.q1", requiresGrad: true), q2 = f.t("v3.q2", requiresGrad: true)
        let k1 = f.t("v3.k1", requiresGrad: true), k2 = f.t("v3.k2", requiresGrad: true)
        let v3 = inBatchContrastiveLoss(q1, k2, temperature: t).loss + inBatchContrastiveLoss(q2, k1, temperature: t).loss
        expectClose(v3, f.values("v3.loss"), "v3")
        v3.backward()
        for (name, x) in [("q1", q1), ("q2", q2), ("k1", k1), ("k2", k2)] { expectClose(x.grad, f.values("v3.g\(name)"), "v3 d\(name)") }

        let qb = f.t("v3block.q", requiresGrad: true), kb = f.t("v3block.k", requiresGrad: true)
        let block = inBatchContrastiveLoss(qb, kb, temperature: t, offset: Int(f.metadata["v3block_offset"]!)!).loss
        expectClose(block, f.values("v3block.loss"), "v3 block")
        block.backward()
        expectClose(qb.grad, f.values("v3block.gq"), "v3 block dq")
        expectClose(kb.grad, f.values("v3block.gk"), "v3 block dk")
    }

    @Test(arguments: ["bn_train", "bn1d_train", "bn_eval"])
    func batchNormMatchesPyTorch(name: String) throws {
        let f = try Fixtures.golden(name)
        let training = name != "bn_eval"
        let x = f.t("x", requiresGrad: true), w = f.t("weight", requiresGrad: true), b = f.t("bias", requiresGrad: true)
        let rm = f.t("running_mean"), rv = f.t("running_var")
        let y = batchNorm(x, weight: w, bias: b, runningMean: rm, runningVar: rv, training: training)
        expectClose(y, f.values("y"), "y")
        y.backward(f.t("gy"))
        expectClose(x.grad, f.values("gx"), "gx")
        expectClose(w.grad, f.values("gweight"), "gweight")
        expectClose(b.grad, f.values("gbias"), "gbias")
        if training {
            expectClose(rm, f.values("running_mean_after"), "running_mean")
            expectClose(rv, f.values("running_var_after"), "running_var")
        }
    }

    /// The demo's SplitBatchNorm puts sample n in group n % G; ours uses consecutive blocks. Feeding
    /// the samples reordered so that block k holds the demo's group k must reproduce it exactly.
    @Test func splitBatchNormMatchesMoCoDemo() throws {
        let f = try Fixtures.golden("split_bn")
        let groups = Int(f.metadata["num_splits"]!)!
        let xs = f.t("x")
        let (n, per) = (xs.shape[0], xs.count / xs.shape[0])
        let order = (0..<groups).flatMap { g in stride(from: g, to: n, by: groups).map { $0 } }   // block position -> sample
        func permuted(_ v: [Float]) -> [Float] { order.flatMap { v[($0 * per)..<(($0 + 1) * per)] } }
        func unpermuted(_ v: [Float]) -> [Float] {
            var out = [Float](repeating: 0, count: v.count)
            for (pos, s) in order.enumerated() { out.replaceSubrange((s * per)..<((s + 1) * per), with: v[(pos * per)..<((pos + 1) * per)]) }
            return out
        }
        let x = Tensor(shape: xs.shape, data: permuted(f.values("x")), requiresGrad: true)
        let w = f.t("weight", requiresGrad: true), b = f.t("bias", requiresGrad: true)
        let rm = f.t("running_mean"), rv = f.t("running_var")
        let y = batchNorm(x, weight: w, bias: b, runningMean: rm, runningVar: rv, training: true, groups: groups)
        #expect(closeness(unpermuted(y.toArray()), f.values("y")).ok)
        y.backward(Tensor(shape: xs.shape, data: permuted(f.values("gy"))))
        #expect(closeness(unpermuted(x.grad!.toArray()), f.values("gx")).ok)
        expectClose(w.grad, f.values("gweight"), "gweight")
        expectClose(b.grad, f.values("gbias"), "gbias")
        expectClose(rm, f.values("running_mean_after"), "running_mean")
        expectClose(rv, f.values("running_var_after"), "running_var")
    }

    @Test func otherOpsMatchPyTorch() throws {
        let f = try Fixtures.golden("ops")
        do {
            let x = f.t("maxpool.x", requiresGrad: true)
            let y = maxPool2d(x, kernel: 3, stride: 2, padding: 1)
            expectClose(y, f.values("maxpool.y"), "maxpool.y")
            y.backward(f.t("maxpool.gy"))
            expectClose(x.grad, f.values("maxpool.gx"), "maxpool.gx")
        }
        do {
            let x = f.t("avgpool.x", requiresGrad: true)
            let y = globalAvgPool(x)
            expectClose(y, f.values("avgpool.y"), "avgpool.y")
            y.backward(f.t("avgpool.gy"))
            expectClose(x.grad, f.values("avgpool.gx"), "avgpool.gx")
        }
        do {
            let x = f.t("linear.x", requiresGrad: true), w = f.t("linear.w", requiresGrad: true), b = f.t("linear.b", requiresGrad: true)
            let y = linear(x, weight: w, bias: b)
            expectClose(y, f.values("linear.y"), "linear.y")
            y.backward(f.t("linear.gy"))
            expectClose(x.grad, f.values("linear.gx"), "linear.gx")
            expectClose(w.grad, f.values("linear.gw"), "linear.gw")
            expectClose(b.grad, f.values("linear.gb"), "linear.gb")
        }
        do {
            let x = f.t("l2norm.x", requiresGrad: true)
            let y = l2Normalized(x)
            expectClose(y, f.values("l2norm.y"), "l2norm.y")
            y.backward(f.t("l2norm.gy"))
            expectClose(x.grad, f.values("l2norm.gx"), "l2norm.gx")
        }
        do {
            let logits = f.t("ce.logits", requiresGrad: true)
            let targets = try f["ce.target"]!.int64s().map(Int.init)
            let loss = crossEntropy(logits, targets: targets)
            expectClose(loss, f.values("ce.loss"), "ce.loss")
            loss.backward()
            expectClose(logits.grad, f.values("ce.glogits"), "ce.glogits")
        }
        do {
            let x = f.t("relu.x", requiresGrad: true)
            let y = relu(x)
            expectClose(y, f.values("relu.y"), "relu.y")
            y.backward(f.t("relu.gy"))
            expectClose(x.grad, f.values("relu.gx"), "relu.gx")
        }
        do {
            let a = f.t("matmul.a", requiresGrad: true), b = f.t("matmul.b", requiresGrad: true)
            let y = matmul(a, b)
            expectClose(y, f.values("matmul.y"), "matmul.y")
            y.backward(f.t("matmul.gy"))
            expectClose(a.grad, f.values("matmul.ga"), "matmul.ga")
            expectClose(b.grad, f.values("matmul.gb"), "matmul.gb")
        }
    }
}
