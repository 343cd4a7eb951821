import Foundation
import Kernels

/// An fp32 n-d array with reverse-mode autodiff.
///
/// The logical shape is row-major (`N x C x H x W` for images); the bytes may sit in a layout a
/// oneDNN primitive chose (`desc`, e.g. channel-blocked), and stay in it from layer to layer so
/// that no reorder runs between convolutions. `toArray()` and `plain()` give the row-major view.
///
/// Tensors are not `Sendable`: a training run is confined to one thread.
public final class Tensor {
    public let shape: [Int]
    /// Physical layout of `buffer`.
    public let desc: MemoryDesc
    public let buffer: Buffer
    /// Whether gradients flow to this tensor (set on parameters; inherited by op outputs).
    public var requiresGrad: Bool
    /// Accumulated gradient of a leaf after `backward()`, in the leaf's own layout.
    public var grad: Tensor?
    /// The op that produced this tensor, while the graph is alive.
    var node: Node?

    init(shape: [Int], desc: MemoryDesc, buffer: Buffer, requiresGrad: Bool = false) {
        self.shape = shape
        self.desc = desc
        self.buffer = buffer
        self.requiresGrad = requiresGrad
    }

    /// A row-major tensor whose contents the caller fills.
    public convenience init(uninitialized shape: [Int], requiresGrad: Bool = false) {
        let d = Tensor.plainDesc(shape)
        self.init(shape: shape, desc: d, buffer: Buffer(byteCount: d.byteCount), requiresGrad: requiresGrad)
    }

    /// A row-major tensor holding `data` (count must match the shape).
    public convenience init(shape: [Int], data: [Float], requiresGrad: Bool = false) {
        precondition(data.count == shape.reduce(1, *), "data has \(data.count) values, shape \(shape) needs \(shape.reduce(1, *))")
        self.init(uninitialized: shape, requiresGrad: requiresGrad)
        buffer.withUnsafeMutableFloats { dst in _ = dst.update(fromContentsOf: data) }
    }

    /// A scalar (shape `[]`).
    public convenience init(_ value: Float) { self.init(shape: [], data: [value]) }

    public static func zeros(_ shape: [Int], requiresGrad: Bool = false) -> Tensor {
        full(shape, 0, requiresGrad: requiresGrad)
    }

    public static func ones(_ shape: [Int], requiresGrad: Bool = false) -> Tensor {
        full(shape, 1, requiresGrad: requiresGrad)
    }

    public static func full(_ shape: [Int], _ value: Float, requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(uninitialized: shape, requiresGrad: requiresGrad)
        t.withUnsafeMutableFloats { Vector.fill($0.baseAddress!, with: value, count: t.count) }
        return t
    }

    /// Standard normal values scaled by `std`, drawn from `rng`.
    public static func randn<G: RandomNumberGenerator>(_ shape: [Int], std: Float = 1, using rng: inout G, requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(uninitialized: shape, requiresGrad: requiresGrad)
        let n = t.count
        t.withUnsafeMutableFloats { p in
            for i in 0..<n { p[i] = Float(rng.nextGaussian()) * std }
        }
        return t
    }

    /// Uniform values in `[low, high)` drawn from `rng`.
    public static func uniform<G: RandomNumberGenerator>(_ shape: [Int], low: Float, high: Float, using rng: inout G, requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(uninitialized: shape, requiresGrad: requiresGrad)
        let n = t.count
        t.withUnsafeMutableFloats { p in
            for i in 0..<n { p[i] = low + (high - low) * Float(rng.nextUnit()) }
        }
        return t
    }

    static func plainDesc(_ shape: [Int]) -> MemoryDesc { MemoryDesc.plain(shape.isEmpty ? [1] : shape) }

    /// Number of logical elements.
    public var count: Int { shape.reduce(1, *) }
    /// Number of floats the layout occupies (padding included).
    var physicalCount: Int { desc.byteCount / 4 }
    /// Whether the bytes are row-major fp32 (what the Swift loops read).
    public var isPlain: Bool { desc.isPlain && desc.dataType == .f32 }
    /// The element type of the bytes (`.bf16` for activations under bf16 mixed precision).
    public var dataType: DataType { desc.dataType }
    public var isLeaf: Bool { node == nil }

    /// Lends the tensor's buffer as mutable floats for the duration of `body`: forwards to
    /// `Buffer.withUnsafeMutableFloats` (the pointer must not escape `body`). Row-major when
    /// `isPlain`, otherwise in `desc`'s layout; the count is the buffer's, which may exceed
    /// `count` (layout padding, or a larger buffer a tensor was made over).
    @inlinable @inline(__always)
    public func withUnsafeMutableFloats<R, E: Error>(_ body: (UnsafeMutableBufferPointer<Float>) throws(E) -> R) throws(E) -> R {
        precondition(desc.dataType == .f32, "float access to a \(desc.dataType) tensor of shape \(shape): take plain() first")
        return try buffer.withUnsafeMutableFloats(body)
    }

    /// Lends the tensor's buffer read-only; the same rules as `withUnsafeMutableFloats`.
    @inlinable @inline(__always)
    public func withUnsafeFloats<R, E: Error>(_ body: (UnsafeBufferPointer<Float>) throws(E) -> R) throws(E) -> R {
        precondition(desc.dataType == .f32, "float access to a \(desc.dataType) tensor of shape \(shape): take plain() first")
        return try buffer.withUnsafeFloats(body)
    }

    /// The values in row-major order.
    public func toArray() -> [Float] {
        let t = isPlain ? self : reorderedRaw(to: Tensor.plainDesc(shape))
        return t.withUnsafeFloats { Array($0[..<count]) }
    }

    /// The single value of a one-element tensor.
    public var item: Float {
        precondition(count == 1, "item needs one element, shape is \(shape)")
        return toArray()[0]
    }

    /// The same values in layout `target`, outside the graph.
    func reorderedRaw(to target: MemoryDesc) -> Tensor {
        if target == desc { return self }
        let out = Buffer(byteCount: target.byteCount)
        ElementwiseKernel.reorder(buffer.pointer, from: desc, into: out.pointer, to: target)
        return Tensor(shape: shape, desc: target, buffer: out)
    }

    /// This tensor's values without its history (shares the buffer).
    public func detached() -> Tensor { Tensor(shape: shape, desc: desc, buffer: buffer) }

    /// Overwrites the values with `other`'s (same shape; layouts may differ), outside the graph.
    public func assign(_ other: Tensor) {
        precondition(other.shape == shape, "assign: shape \(other.shape) into \(shape)")
        if other.desc == desc {
            buffer.pointer.copyMemory(from: other.buffer.pointer, byteCount: desc.byteCount)
        } else {
            ElementwiseKernel.reorder(other.buffer.pointer, from: other.desc, into: buffer.pointer, to: desc)
        }
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let values = toArray()
        let shown = values.prefix(8).map { String(format: "%.4g", $0) }.joined(separator: ", ")
        return "Tensor(\(shape), [\(shown)\(values.count > 8 ? ", ..." : "")])"
    }
}

// MARK: - Graph

/// One recorded op: its inputs and the function from the output's gradient to theirs.
final class Node {
    let inputs: [Tensor]
    let backward: (Tensor) -> [Tensor?]
    init(inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) {
        self.inputs = inputs
        self.backward = backward
    }
}

/// Whether ops record the graph. Off inside `withNoGrad` (the key encoder, evaluation).
public enum GradMode {
    @TaskLocal static var enabled = true

    public static var isEnabled: Bool { enabled }

    /// Runs `body` without recording any op for backward.
    public static func withNoGrad<R>(_ body: () throws -> R) rethrows -> R {
        try $enabled.withValue(false, operation: body)
    }
}

extension Tensor {
    /// Wraps an op's output: records `backward` when gradients are on and some input needs one.
    static func result(shape: [Int], desc: MemoryDesc, buffer: Buffer, inputs: [Tensor],
                       backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        let t = Tensor(shape: shape, desc: desc, buffer: buffer)
        if GradMode.isEnabled && inputs.contains(where: { $0.requiresGrad }) {
            t.requiresGrad = true
            t.node = Node(inputs: inputs, backward: backward)
        }
        return t
    }

    /// Whether an op should prepare for a backward pass through `inputs`.
    static func needsGrad(_ inputs: Tensor?...) -> Bool {
        GradMode.isEnabled && inputs.contains { $0?.requiresGrad == true }
    }

    /// Reverse-mode pass from this tensor. `seed` defaults to ones (a scalar loss gets 1).
    /// Gradients accumulate into leaves' `grad`; the graph is released as it is walked.
    public func backward(_ seed: Tensor? = nil) {
        precondition(requiresGrad, "backward() on a tensor that does not require grad")
        // Topological order by iterative depth-first search.
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(self, false)]
        while let (t, expanded) = stack.popLast() {
            if expanded { order.append(t); continue }
            if !visited.insert(ObjectIdentifier(t)).inserted { continue }
            stack.append((t, true))
            for i in t.node?.inputs ?? [] where i.requiresGrad && !visited.contains(ObjectIdentifier(i)) {
                stack.append((i, false))
            }
        }
        var grads: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seed ?? Tensor.ones(shape)]
        for t in order.reversed() {
            guard let g = grads.removeValue(forKey: ObjectIdentifier(t)) else { continue }
            precondition(g.shape == t.shape, "gradient shape \(g.shape) for tensor of shape \(t.shape)")
            guard let node = t.node else {
                t.grad = t.grad.map { accumulated($0, g) } ?? g.reorderedRaw(to: t.desc)
                continue
            }
            let inputGrads = GradMode.withNoGrad { node.backward(g) }
            precondition(inputGrads.count == node.inputs.count)
            for (input, gi) in zip(node.inputs, inputGrads) {
                guard input.requiresGrad, let gi else { continue }
                precondition(gi.shape == input.shape, "op returned gradient \(gi.shape) for input \(input.shape)")
                let id = ObjectIdentifier(input)
                grads[id] = grads[id].map { accumulated($0, gi) } ?? gi
            }
            t.node = nil
        }
    }
}

/// `a + b` into a fresh buffer in `a`'s layout (never in place: a gradient may be shared).
/// bf16 gradients are added by oneDNN (in fp32, rounded once), as PyTorch adds them.
func accumulated(_ a: Tensor, _ b: Tensor) -> Tensor {
    let bb = b.reorderedRaw(to: a.desc)
    let out = Buffer(byteCount: a.desc.byteCount)
    if a.dataType != .f32 {
        ElementwiseKernel.add(a.desc, relu: false)
            .execute([(.src, a.desc, a.buffer.pointer), (.src1, a.desc, bb.buffer.pointer), (.dst, a.desc, out.pointer)])
        return Tensor(shape: a.shape, desc: a.desc, buffer: out)
    }
    a.withUnsafeFloats { pa in
        bb.withUnsafeFloats { pb in
            out.withUnsafeMutableFloats { Vector.add(pa.baseAddress!, pb.baseAddress!, into: $0.baseAddress!, count: a.physicalCount) }
        }
    }
    return Tensor(shape: a.shape, desc: a.desc, buffer: out)
}

extension Tensor {
    /// A row-major tensor over an existing buffer (e.g. a batch a data worker filled).
    public convenience init(shape: [Int], buffer: Buffer) {
        let d = Tensor.plainDesc(shape)
        precondition(buffer.byteCount >= d.byteCount, "buffer of \(buffer.byteCount) bytes for shape \(shape)")
        self.init(shape: shape, desc: d, buffer: buffer)
    }
}
