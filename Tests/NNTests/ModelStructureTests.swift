import Foundation
import Autograd
import Kernels
import NN
import TestSupport
import Testing

/// Parameter counts and state-dict keys, shapes and dtypes against torchvision's (models.json).
@Suite(.serialized) struct ModelStructureTests {
    struct Reference: Decodable {
        let num_parameters: Int
        let state_dict: [[Entry]]
        enum Entry: Decodable {
            case string(String), shape([Int])
            init(from d: Decoder) throws {
                let c = try d.singleValueContainer()
                if let s = try? c.decode(String.self) { self = .string(s) } else { self = .shape(try c.decode([Int].self)) }
            }
        }
    }

    static let references: [String: Reference] = {
        let url = Fixtures.root.appendingPathComponent("torchvision/models.json")
        return try! JSONDecoder().decode([String: Reference].self, from: Data(contentsOf: url))
    }()

    @Test(arguments: [
        ("resnet18", ResNetConfig(arch: .resnet18)),
        ("resnet34", ResNetConfig(arch: .resnet34)),
        ("resnet50", ResNetConfig(arch: .resnet50)),
        ("resnet18_cifar_w32_in1", ResNetConfig(arch: .resnet18, stem: .cifar, width: 32, inChannels: 1, numClasses: 128)),
    ])
    func matchesTorchvision(name: String, config: ResNetConfig) throws {
        let ref = try #require(Self.references[name])
        var rng = SeededGenerator(seed: 4)
        let model = ResNet(config, using: &rng)
        #expect(model.parameterCount == ref.num_parameters)
        let ours = model.stateDict().map { e -> String in
            "\(e.name) \(e.tensor.shape) \(e.tensor.dtype == .i64 ? "int64" : "float32")"
        }
        let theirs = ref.state_dict.map { row -> String in
            guard case .string(let k) = row[0], case .shape(let s) = row[1], case .string(let dt) = row[2] else { return "?" }
            return "\(k) \(s) \(dt.replacingOccurrences(of: "torch.", with: ""))"
        }
        #expect(ours == theirs)
    }

    @Test func torchvisionInitialization() {
        var rng = SeededGenerator(seed: 5)
        let model = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 16, inChannels: 3, numClasses: 10), using: &rng)
        // Kaiming normal, fan_out: std = sqrt(2 / (out * k * k)).
        let w = model.layer3.layers.compactMap { $0 as? BasicBlock }.first!.conv2.weight.toArray()
        let std = (w.map { $0 * $0 }.reduce(0, +) / Float(w.count)).squareRoot()
        let expected = (2 / Float(64 * 9)).squareRoot()
        #expect(abs(std - expected) / expected < 0.05)
        for m in model.modules() {
            if let bn = m as? BatchNorm {
                #expect(bn.weight.toArray().allSatisfy { $0 == 1 } && bn.bias.toArray().allSatisfy { $0 == 0 })
            }
        }
    }
}
