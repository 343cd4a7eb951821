import Kernels

/// The precision a model's forward pass computes in.
public enum Precision: String, Codable, Sendable, CaseIterable {
    /// Everything in fp32.
    case fp32
    /// Mixed precision as PyTorch's CPU autocast runs it: convolutions and matrix products take
    /// bf16 operands and accumulate in fp32; activations between layers are stored in bf16;
    /// batch-norm statistics, normalization, softmax and the loss stay in fp32, and so do the
    /// parameters, their gradients and the optimizer's state.
    case bf16
}

/// Which precision ops run in, scoped like `GradMode`: `Autocast.with(.bf16) { model(x) }`.
///
/// What each op does under `.bf16`:
/// - `conv2d`: input and weights cast to bf16, output bf16; backward gives a bf16 input gradient
///   and an fp32 weight gradient.
/// - `matmul` / `linear`: operands cast to bf16, product and gradients in fp32.
/// - `batchNorm`, `relu`, `add`, `maxPool2d`: run in their input's type (statistics in fp32).
/// - `globalAvgPool` returns fp32; every Swift-loop op (normalization, loss, concat) reads fp32
///   through `plain()`, which converts.
///
/// Weights are cast once per scope: a convolution's bf16 weights are kept for the rest of the
/// `with` call, so an encoder run twice in one step (the symmetric loss) casts them once. The
/// parameters must therefore not change inside one scope; a training step runs its forward
/// passes in one scope, after the key encoder's EMA update and before the optimizer step.
public enum Autocast {
    @TaskLocal static var precision: Precision = .fp32
    @TaskLocal static var weights: WeightCache?

    public static var current: Precision { precision }

    /// Runs `body` with ops computing in `p`.
    public static func with<R>(_ p: Precision, _ body: () throws -> R) rethrows -> R {
        guard p == .bf16 else { return try $precision.withValue(p) { try $weights.withValue(nil, operation: body) } }
        return try $precision.withValue(p) { try $weights.withValue(WeightCache(), operation: body) }
    }

    /// The operand type of convolutions and matrix products now.
    static var computeType: DataType { precision == .bf16 ? .bf16 : .f32 }

    /// Weight casts done so far in the current scope (0 outside one): for tests.
    public static var weightCastsInScope: Int { weights?.casts ?? 0 }

    /// `weight` in layout `target`: cast once per scope under bf16, reordered on every call otherwise.
    static func weight(_ weight: Tensor, as target: MemoryDesc) -> Tensor {
        guard let cache = weights, target.dataType != weight.dataType else { return weight.reorderedRaw(to: target) }
        let key = WeightCache.Key(weight: ObjectIdentifier(weight), desc: target)
        if let hit = cache.entries[key] { return hit.cast }
        let cast = weight.reorderedRaw(to: target)
        cache.entries[key] = (cast, weight)
        cache.casts += 1
        return cast
    }
}

/// The cast weights of one `Autocast` scope. It holds each source weight too, so that an
/// `ObjectIdentifier` is never reused for another tensor while its entry lives.
final class WeightCache: @unchecked Sendable {
    /// Confined to the thread that runs the scope (tensors are not shared across threads).
    struct Key: Hashable { var weight: ObjectIdentifier; var desc: MemoryDesc }
    var entries: [Key: (cast: Tensor, source: Tensor)] = [:]
    var casts = 0
}

extension Tensor {
    /// The same values converted to `type` (same layout), outside the graph.
    public func cast(to type: DataType) -> Tensor { reorderedRaw(to: desc.with(type)) }
}
