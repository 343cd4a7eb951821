import Foundation
import Kernels
import NN
import Autograd
import TestSupport
import Testing

/// Relative L2 distance `‖a − e‖ / ‖e‖`: the measure for bf16 results, whose single entries
/// move by a rounding of 2⁻⁹ relative while the whole stays within a fraction of a percent.
func relativeError(_ a: [Float], _ e: [Float]) -> Double {
    precondition(a.count == e.count, "compared arrays differ in length: \(a.count) vs \(e.count)")
    var d = 0.0, n = 0.0
    for i in 0..<a.count { d += Double(a[i] - e[i]) * Double(a[i] - e[i]); n += Double(e[i]) * Double(e[i]) }
    return (d / max(n, 1e-30)).squareRoot()
}

/// bf16 mixed precision (`Autocast`) against PyTorch 2.15's CPU autocast (fixtures from
/// scripts/make_golden.py, `autocast_*`).
///
/// Where autocast differs on purpose: it casts parameters to bf16 with a differentiable cast, so
/// its parameter gradients are rounded to bf16 (and `linear` adds a bf16 bias and returns bf16);
/// mocod computes parameter gradients, biases and the head in fp32. Those are compared within
/// bf16's rounding (2⁻⁸ relative).
@Suite(.serialized) struct MixedPrecisionTests {
    func expectAutocast(_ actual: Tensor?, _ f: SafeTensorsFile, _ key: String, tolerance: Double) {
        guard let actual else { Issue.record("\(key): no value"); return }
        let e = relativeError(actual.toArray(), f.values(key))
        #expect(e <= tolerance, "\(key): relative error \(e) against autocast, tolerance \(tolerance)")
    }

    /// One convolution: the same bf16 operands and fp32 accumulation give autocast's output and
    /// input gradient (bit for bit here; 1e-3 leaves room for another kernel's summation order).
    @Test func conv2dMatchesAutocast() throws {
        let f = try Fixtures.golden("autocast_conv2d")
        let x = f.t("x", requiresGrad: true), w = f.t("w", requiresGrad: true)
        let y = Autocast.with(.bf16) { conv2d(x, w, stride: 1, padding: 1) }
        #expect(y.dataType == .bf16, "a bf16 convolution's output is stored in bf16")
        expectAutocast(y, f, "y", tolerance: 1e-3)
        // fp32 is far from it: the fixture's fp32 result is rounding away (the check can fail).
        #expect(relativeError(f.values("fp32.y"), f.values("y")) > 2e-3)
        y.backward(f.t("gy"))
        #expect(x.grad?.dataType == .f32 && w.grad?.dataType == .f32, "leaf gradients come back in their leaves' type")
        expectAutocast(x.grad, f, "gx", tolerance: 1e-3)
        expectAutocast(w.grad, f, "gw", tolerance: 4e-3)
    }

    @Test func linearMatchesAutocast() throws {
        let f = try Fixtures.golden("autocast_linear")
        let x = f.t("x", requiresGrad: true), w = f.t("w", requiresGrad: true), b = f.t("b", requiresGrad: true)
        let y = Autocast.with(.bf16) { linear(x, weight: w, bias: b) }
        expectAutocast(y, f, "y", tolerance: 4e-3)
        y.backward(f.t("gy"))
        expectAutocast(x.grad, f, "gx", tolerance: 4e-3)
        expectAutocast(w.grad, f, "gw", tolerance: 4e-3)
        expectAutocast(b.grad, f, "gb", tolerance: 4e-3)
    }

    /// A whole ResNet-18 (CIFAR stem, width 8, batch 16 at 32x32) forward and backward in
    /// training mode. Through 20 layers bf16 rounding moves gradients a long way: autocast's are
    /// about 30 % (relative L2) from fp32's, and the noise differs between any two bf16
    /// implementations. mocod's bf16 must sit measurably closer to autocast than fp32 does:
    /// output within 0.6x, all parameter gradients together within 0.75x of fp32's distance.
    @Test func resnet18MatchesAutocast() throws {
        let f = try Fixtures.golden("autocast_resnet18_cifar_w8")
        var rng = SeededGenerator(seed: 3)
        let model = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 8, inChannels: 3, numClasses: 10), using: &rng)
        var params: [String: SafeTensor] = [:]
        for (name, t) in f.tensors where name.hasPrefix("param.") { params[String(name.dropFirst(6))] = t }
        try model.loadStateDict(params, strict: false)
        let x = f.t("x", requiresGrad: true)
        let y = Autocast.with(.bf16) { model(x) }
        let yErr = relativeError(y.toArray(), f.values("y")), yFP32 = relativeError(f.values("fp32.y"), f.values("y"))
        #expect(yErr <= 1e-2 && yErr <= 0.6 * yFP32, "y: \(yErr) from autocast; fp32 is \(yFP32) from it")
        y.backward(f.t("gy"))
        var ours: [Float] = [], autocast: [Float] = [], fp32: [Float] = []
        for (name, p) in model.namedParameters() {
            let g = p.grad!.toArray(), e = f.values("grad.\(name)")
            ours += g; autocast += e; fp32 += f.values("fp32.grad.\(name)")
            let err = relativeError(g, e)
            #expect(err <= 0.5, "grad.\(name): relative error \(err) against autocast")
        }
        let gErr = relativeError(ours, autocast), gFP32 = relativeError(fp32, autocast)
        #expect(gErr <= 0.75 * gFP32, "all gradients: \(gErr) from autocast; fp32 is \(gFP32) from it")
        for e in model.stateEntries() {
            if case .buffer(let k, let t) = e, !k.hasSuffix("num_batches_tracked") {
                let c = relativeError(t.toArray(), f.values("after.\(k)"))
                #expect(c <= 1e-2, "after.\(k): relative error \(c)")
            }
        }
    }

    /// A convolution's weights are cast to bf16 once per `Autocast` scope: a second pass through
    /// the encoder in the same step (the symmetric loss) reuses them; the next scope (the next
    /// step, after the optimizer moved the weights) casts them afresh.
    @Test func weightsAreCastOncePerScope() {
        var rng = SeededGenerator(seed: 8)
        let model = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 8, inChannels: 1, numClasses: 4), using: &rng)
        let x = Tensor.randn([4, 1, 12, 12], using: &rng)
        let convs = model.namedParameters().filter { $0.1.shape.count == 4 }.count
        let (first, second) = Autocast.with(.bf16) { () -> (Tensor, Tensor) in
            let a = model(x)
            #expect(Autocast.weightCastsInScope == convs)
            let b = model(x)
            #expect(Autocast.weightCastsInScope == convs, "the second pass cast again")
            return (a, b)
        }
        #expect(first.toArray() == second.toArray())
        #expect(Autocast.weightCastsInScope == 0)
        // The weights move between steps; the next scope sees them.
        let w = model.namedParameters().first { $0.0 == "conv1.weight" }!.1
        w.withUnsafeMutableFloats { for i in 0..<w.count { $0[i] *= 2 } }
        let moved = Autocast.with(.bf16) { model(x) }
        #expect(moved.toArray() != first.toArray())
    }

    /// Products of bf16 values are exact in fp32, so a bf16 matmul equals fp32 SGEMM on the
    /// operands rounded to bf16 up to the order of the fp32 sums: every transpose combination.
    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func bf16MatmulIsSGEMMOnRoundedOperands(transposes: (Bool, Bool)) {
        let (ta, tb) = transposes
        var rng = SeededGenerator(seed: 11)
        let (m, n, k) = (37, 29, 70)
        let a = Tensor.randn(ta ? [k, m] : [m, k], using: &rng), b = Tensor.randn(tb ? [n, k] : [k, n], using: &rng)
        let c = Autocast.with(.bf16) { matmul(a, b, transposeA: ta, transposeB: tb) }
        #expect(c.dataType == .f32)
        let ra = a.cast(to: .bf16).cast(to: .f32), rb = b.cast(to: .bf16).cast(to: .f32)
        let reference = matmul(ra, rb, transposeA: ta, transposeB: tb)
        let close = closeness(c.toArray(), reference.toArray(), rtol: 1e-5, atol: 1e-5)
        #expect(close.ok, "\(close)")
        // And the rounding is real: fp32 on the unrounded operands differs.
        #expect(relativeError(matmul(a, b, transposeA: ta, transposeB: tb).toArray(), reference.toArray()) > 1e-4)
    }

    /// bf16 keeps the upper 16 bits of an fp32, rounded to nearest even.
    @Test func castRoundsToNearestEven() {
        let values: [Float] = [1, 1 + 1.0 / 256, 1 + 1.0 / 128 + 1.0 / 256, -3.14159, 65504, 1e-20]
        let expected: [Float] = [1, 1, 1 + 1.0 / 64, -3.140625, 65536, Float(bitPattern: (Float(1e-20).bitPattern + 0x7fff + ((Float(1e-20).bitPattern >> 16) & 1)) & 0xffff_0000)]
        let t = Tensor(shape: [values.count], data: values)
        let h = t.cast(to: .bf16)
        #expect(h.dataType == .bf16 && h.desc.byteCount == 2 * values.count)
        #expect(h.cast(to: .f32).toArray() == expected)
    }

    /// Activations between layers are stored in bf16: half the bytes of fp32, and the kernels
    /// oneDNN picks for them are its bf16 ones where the CPU has them.
    @Test func activationsAreStoredInBF16() {
        var rng = SeededGenerator(seed: 5)
        let model = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 16, inChannels: 1, numClasses: 8), using: &rng)
        let x = Tensor.randn([4, 1, 12, 12], using: &rng)
        let c1 = Autocast.with(.bf16) { model.conv1(x) }, f1 = model.conv1(x)
        #expect(c1.dataType == .bf16 && f1.dataType == .f32)
        #expect(2 * c1.desc.byteCount == f1.desc.byteCount)
        let h = Autocast.with(.bf16) { model.bn1(c1) }
        #expect(h.dataType == .bf16, "batch norm keeps its input's type")
        let y = Autocast.with(.bf16) { model(x) }
        #expect(y.dataType == .f32, "the head and everything after the pooling compute in fp32")
        let s = ConvShape(batch: 4, inChannels: 16, height: 12, width: 12, outChannels: 16, kernel: 3, stride: 1, padding: 1,
                          hasBias: false, dataType: .bf16)
        let fwd = Convolution.forward(s, src: MemoryDesc.plain(s.srcDims, .bf16), training: true)
        if Runtime.bf16.onednn_bf16 {
            #expect(fwd.implementation.contains("bf16"), "oneDNN runs \(fwd.implementation)")
        }
        #expect(fwd.md(.dst).dataType == .bf16 && fwd.md(.weights).dataType == .bf16)
    }
}
