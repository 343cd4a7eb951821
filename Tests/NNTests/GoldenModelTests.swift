import Foundation
import Autograd
import Kernels
import NN
import TestSupport
import Testing

/// Whole blocks, a whole ResNet-18 and SGD against PyTorch 2.15 (scripts/make_golden.py).
@Suite(.serialized) struct GoldenModelTests {
    /// Loads `param.*`, runs forward and backward with `gy`, and compares output, input gradient,
    /// every parameter gradient and the running statistics after the step.
    func check(_ model: any Layer, _ f: SafeTensorsFile, rtol: Float, atol: Float) throws {
        var params: [String: SafeTensor] = [:]
        for (name, t) in f.tensors where name.hasPrefix("param.") { params[String(name.dropFirst(6))] = t }
        try model.loadStateDict(params, strict: false)
        let loaded = Set(params.keys)
        for e in model.stateEntries() where !e.key.hasSuffix("num_batches_tracked") {
            #expect(loaded.contains(e.key), "fixture lacks \(e.key)")
        }
        let x = f.t("x", requiresGrad: true)
        let y = model(x)
        let cy = closeness(y.toArray(), f.values("y"), rtol: rtol, atol: atol)
        #expect(cy.ok, "y: \(cy)")
        y.backward(f.t("gy"))
        let cx = closeness(x.grad!.toArray(), f.values("gx"), rtol: rtol, atol: atol)
        #expect(cx.ok, "gx: \(cx)")
        for (name, p) in model.namedParameters() {
            let c = closeness(p.grad!.toArray(), f.values("grad.\(name)"), rtol: rtol, atol: atol)
            #expect(c.ok, "grad.\(name): \(c)")
        }
        for e in model.stateEntries() {
            if case .buffer(let k, let t) = e {
                let c = closeness(t.toArray(), f.values("after.\(k)"), rtol: rtol, atol: atol)
                #expect(c.ok, "after.\(k): \(c)")
            }
        }
    }

    @Test func basicBlock() throws {
        var rng = SeededGenerator(seed: 1)
        let ds = Sequential([Conv2d(inputChannels: 8, outputChannels: 16, kernelSize: 1, stride: 2, using: &rng), BatchNorm(features: 16)])
        let block = BasicBlock(inputChannels: 8, channels: 16, stride: 2, downsample: ds, using: &rng)
        try check(block, Fixtures.golden("basic_block"), rtol: 1e-4, atol: 1e-5)
    }

    @Test func bottleneck() throws {
        var rng = SeededGenerator(seed: 2)
        let ds = Sequential([Conv2d(inputChannels: 8, outputChannels: 16, kernelSize: 1, stride: 2, using: &rng), BatchNorm(features: 16)])
        let block = Bottleneck(inputChannels: 8, channels: 4, stride: 2, downsample: ds, using: &rng)
        try check(block, Fixtures.golden("bottleneck"), rtol: 1e-4, atol: 1e-5)
    }

    /// rtol 1e-4 as everywhere, with an absolute floor of 5e-5 instead of 1e-5: after 20 layers of
    /// fp32 summed in other orders than PyTorch's kernels, small gradient entries (|g| ~ 0.03) of
    /// the first layers differ by up to ~4e-5.
    @Test func resnet18CifarWidth16() throws {
        let f = try Fixtures.golden("resnet18_cifar_w16")
        var rng = SeededGenerator(seed: 3)
        let model = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 16, inChannels: 3, numClasses: 10), using: &rng)
        try check(model, f, rtol: 1e-4, atol: 5e-5)
    }

    @Test func sgdThreeSteps() throws {
        let f = try Fixtures.golden("sgd")
        let p0 = f.t("p0.init", requiresGrad: true), p1 = f.t("p1.init", requiresGrad: true)
        let opt = SGD(parameters: [p0, p1], learningRate: Float(f.metadata["lr"]!)!, momentum: Float(f.metadata["momentum"]!)!,
                      weightDecay: Float(f.metadata["weight_decay"]!)!)
        for step in 0..<3 {
            p0.grad = f.t("p0.grad.\(step)")
            p1.grad = f.t("p1.grad.\(step)")
            opt.step()
            #expect(closeness(p0.toArray(), f.values("p0.after.\(step)"), rtol: 1e-5, atol: 1e-7).ok, "p0 step \(step)")
            #expect(closeness(p1.toArray(), f.values("p1.after.\(step)"), rtol: 1e-5, atol: 1e-7).ok, "p1 step \(step)")
        }
    }

    /// MoCo v3's LARS (its code, in scripts/make_golden.py) for three steps with a changing rate:
    /// a weight (decay and trust ratio), a bias (neither) and a zero weight (trust ratio 1).
    @Test func larsThreeSteps() throws {
        let f = try Fixtures.golden("lars")
        let ps = (0..<3).map { f.t("p\($0).init", requiresGrad: true) }
        let lrs = f.metadata["lrs"]!.split(separator: ",").map { Float($0)! }
        let opt = LARS(parameters: ps, learningRate: lrs[0], momentum: Float(f.metadata["momentum"]!)!,
                       weightDecay: Float(f.metadata["weight_decay"]!)!, trustCoefficient: Float(f.metadata["trust_coefficient"]!)!)
        #expect(ps.map(LARS.adapts) == [true, false, true])
        for (step, lr) in lrs.enumerated() {
            opt.learningRate = lr
            for (i, p) in ps.enumerated() { p.grad = f.t("p\(i).grad.\(step)") }
            opt.step()
            for (i, p) in ps.enumerated() {
                let c = closeness(p.toArray(), f.values("p\(i).after.\(step)"), rtol: 1e-5, atol: 1e-7)
                #expect(c.ok, "p\(i) step \(step): \(c)")
            }
        }
        #expect(opt.momentumBuffers.allSatisfy { $0 != nil })
    }
}
