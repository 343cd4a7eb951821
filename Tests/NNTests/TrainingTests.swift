import Foundation
import Autograd
import Kernels
import NN
import TestSupport
import Testing

@Suite(.serialized) struct TrainingTests {
    /// Four classes of 1x8x8 images: which quadrant is bright, under noise.
    func batch(_ n: Int, _ rng: inout SeededGenerator) -> (Tensor, [Int]) {
        var data = [Float](repeating: 0, count: n * 64)
        var labels: [Int] = []
        for i in 0..<n {
            let c = Int(rng.next() % 4)
            labels.append(c)
            for y in 0..<8 {
                for x in 0..<8 {
                    let inside = (y < 4) == (c < 2) && (x < 4) == (c % 2 == 0)
                    data[i * 64 + y * 8 + x] = (inside ? 1 : 0) + Float(rng.nextGaussian()) * 0.3
                }
            }
        }
        return (Tensor(shape: [n, 1, 8, 8], data: data), labels)
    }

    @Test func tinyResNetLearnsSyntheticTask() {
        var rng = SeededGenerator(seed: 11)
        let model = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 4, inChannels: 1, numClasses: 4), using: &rng)
        let opt = SGD(parameters: model.parameters(), learningRate: 0.05, momentum: 0.9, weightDecay: 1e-4)
        for _ in 0..<40 {
            let (x, y) = batch(32, &rng)
            let loss = crossEntropy(model(x), targets: y)
            opt.zeroGrad()
            loss.backward()
            opt.step()
        }
        model.eval()
        let (x, y) = batch(400, &rng)
        let logits = GradMode.withNoGrad { model(x) }.toArray()
        let correct = (0..<400).filter { i in
            let row = logits[(i * 4)..<(i * 4 + 4)]
            return row.firstIndex(of: row.max()!)! - i * 4 == y[i]
        }.count
        #expect(Double(correct) / 400 >= 0.95, "accuracy \(Double(correct) / 400)")
    }

    /// After warm-up, a training step takes every buffer from the pool and creates no primitive.
    @Test func steadyStateStepAllocatesNothing() {
        var rng = SeededGenerator(seed: 12)
        let model = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 8, inChannels: 1, numClasses: 4), using: &rng)
        let opt = SGD(parameters: model.parameters(), learningRate: 0.01, momentum: 0.9, weightDecay: 1e-4)
        let x = Tensor.randn([8, 1, 8, 8], using: &rng)
        func step() {
            let loss = crossEntropy(model(x), targets: [0, 1, 2, 3, 0, 1, 2, 3])
            opt.zeroGrad()
            loss.backward()
            opt.step()
        }
        step(); step()
        let allocations = BufferPool.stats.allocations, primitives = KernelStats.primitivesCreated
        step(); step()
        #expect(BufferPool.stats.allocations == allocations)
        #expect(KernelStats.primitivesCreated == primitives)
    }

    @Test func learningRateSchedules() {
        let cos = LearningRateSchedule.cosine(epochs: 10, perStep: false)
        #expect(cos.rate(base: 0.1, epoch: 0, step: 0, stepsPerEpoch: 5) == 0.1)
        #expect(abs(cos.rate(base: 0.1, epoch: 5, step: 3, stepsPerEpoch: 5) - 0.05) < 1e-6)
        let cosStep = LearningRateSchedule.cosine(epochs: 10, perStep: true)
        #expect(cosStep.rate(base: 0.1, epoch: 5, step: 3, stepsPerEpoch: 5) < 0.05)
        let multi = LearningRateSchedule.multiStep(milestones: [120, 160], gamma: 0.1)
        #expect(multi.rate(base: 0.03, epoch: 119, step: 0, stepsPerEpoch: 1) == 0.03)
        #expect(abs(multi.rate(base: 0.03, epoch: 120, step: 0, stepsPerEpoch: 1) - 0.003) < 1e-7)
        #expect(abs(multi.rate(base: 0.03, epoch: 199, step: 0, stepsPerEpoch: 1) - 0.0003) < 1e-8)
        let warm = LearningRateSchedule.warmup(epochs: 2, then: .constant)
        #expect(warm.rate(base: 1, epoch: 0, step: 0, stepsPerEpoch: 10) == 0.05)
        #expect(warm.rate(base: 1, epoch: 1, step: 9, stepsPerEpoch: 10) == 1)
        #expect(warm.rate(base: 1, epoch: 3, step: 0, stepsPerEpoch: 10) == 1)
    }
}

@Suite(.serialized) struct FusionTests {
    /// Fused ReLUs (inside batch norm and the residual add) compute what separate passes compute.
    @Test(arguments: [ResNetConfig.Arch.resnet18, .resnet50])
    func fusedAndUnfusedAgree(arch: ResNetConfig.Arch) {
        var rng = SeededGenerator(seed: 21)
        let model = ResNet(ResNetConfig(arch: arch, stem: .imagenet, width: 8, inChannels: 3, numClasses: 5), using: &rng)
        let x = Tensor.randn([4, 3, 32, 32], using: &rng)
        func run(_ fused: Bool) -> [[Float]] {
            model.fused = fused
            let y = model(x)
            for p in model.parameters() { p.grad = nil }
            sum(y).backward()
            return [y.toArray()] + model.parameters().map { $0.grad!.toArray() }
        }
        let a = run(true), b = run(false)
        for (u, v) in zip(a, b) { #expect(closeness(u, v, rtol: 1e-5, atol: 1e-6).ok) }
    }
}
