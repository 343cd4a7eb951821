import Kernels
import Autograd

/// One named piece of a module's state, in PyTorch's `state_dict` order.
public enum StateEntry {
    /// A trainable tensor (`weight`, `bias`).
    case parameter(String, Tensor)
    /// A non-trainable tensor (`running_mean`, `running_var`).
    case buffer(String, Tensor)
    /// An integer buffer (`num_batches_tracked`), stored as int64.
    case counter(String, get: () -> Int64, set: (Int64) -> Void)

    public var key: String {
        switch self {
        case .parameter(let k, _), .buffer(let k, _), .counter(let k, _, _): k
        }
    }

    func prefixed(_ p: String) -> StateEntry {
        switch self {
        case .parameter(let k, let t): .parameter(p + k, t)
        case .buffer(let k, let t): .buffer(p + k, t)
        case .counter(let k, let g, let s): .counter(p + k, get: g, set: s)
        }
    }
}

/// A network component: its own parameters and buffers, and named children.
///
/// Parameters, buffers and the train/eval mode are kept apart (as PyTorch's `register_buffer`);
/// children are listed explicitly, in registration order, which fixes the state-dict key order.
public protocol Module: AnyObject {
    /// This module's own tensors, parameters first, then buffers (not its children's).
    var ownState: [StateEntry] { get }
    /// Named direct children, in registration order.
    var children: [(String, any Module)] { get }
    /// Whether the module behaves as in training (batch statistics) or evaluation.
    var isTraining: Bool { get set }
}

/// A module that maps one tensor to another.
public protocol Layer: Module {
    func callAsFunction(_ x: Tensor) -> Tensor
}

extension Module {
    public var ownState: [StateEntry] { [] }
    public var children: [(String, any Module)] { [] }

    /// Every tensor and counter with its dotted torchvision-style key, in state-dict order.
    public func stateEntries(prefix: String = "") -> [StateEntry] {
        var out = ownState.map { $0.prefixed(prefix) }
        for (name, child) in children { out += child.stateEntries(prefix: prefix + name + ".") }
        return out
    }

    /// Trainable parameters with their keys.
    public func namedParameters() -> [(String, Tensor)] {
        stateEntries().compactMap { if case .parameter(let k, let t) = $0 { (k, t) } else { nil } }
    }

    public func parameters() -> [Tensor] { namedParameters().map(\.1) }

    /// Number of trainable scalars.
    public var parameterCount: Int { parameters().reduce(0) { $0 + $1.count } }

    /// Sets training or evaluation mode on this module and every descendant.
    public func train(_ on: Bool = true) {
        isTraining = on
        for (_, c) in children { c.train(on) }
    }

    public func eval() { train(false) }

    /// Every descendant module (depth first, self included).
    public func modules() -> [any Module] {
        [self] + children.flatMap { $0.1.modules() }
    }
}

/// Layers applied in order; children are named `0`, `1`, ... as `nn.Sequential`.
public final class Sequential: Layer {
    public var layers: [any Layer]
    public var isTraining = true

    public init(_ layers: [any Layer]) { self.layers = layers }

    public var children: [(String, any Module)] { layers.enumerated().map { (String($0.offset), $0.element) } }

    public func callAsFunction(_ x: Tensor) -> Tensor { layers.reduce(x) { $1($0) } }
}
