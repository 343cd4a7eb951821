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
public enum Autocast {
    @TaskLocal static var precision: Precision = .fp32

    public static var current: Precision { precision }

    /// Runs `body` with ops computing in `p`.
    public static func with<R>(_ p: Precision, _ body: () throws -> R) rethrows -> R {
        try $precision.withValue(p, operation: body)
    }

    /// The operand type of convolutions and matrix products now.
    static var computeType: DataType { precision == .bf16 ? .bf16 : .f32 }
}

extension Tensor {
    /// The same values converted to `type` (same layout), outside the graph.
    public func cast(to type: DataType) -> Tensor { reorderedRaw(to: desc.with(type)) }
}
