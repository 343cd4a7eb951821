import Foundation
import Autograd

extension Module {
    /// The module's state as safetensors entries with torchvision's keys, in state-dict order
    /// (fp32 tensors; `num_batches_tracked` as int64 scalars, as PyTorch stores it).
    public func stateDict(prefix: String = "") -> [(name: String, tensor: SafeTensor)] {
        stateEntries(prefix: prefix).map { e in
            switch e {
            case .parameter(let k, let t), .buffer(let k, let t): (k, SafeTensor(t))
            case .counter(let k, let get, _): (k, SafeTensor(int64s: [get()], shape: []))
            }
        }
    }

    /// Loads values by key. `strict` requires the keys to match exactly (PyTorch's `strict=True`);
    /// otherwise missing keys keep their values and unknown keys are ignored. Shapes must match.
    public func loadStateDict(_ tensors: [String: SafeTensor], prefix: String = "", strict: Bool = true) throws(SafeTensorsError) {
        let entries = stateEntries(prefix: prefix)
        if strict {
            let want = Set(entries.map(\.key))
            let missing = entries.map(\.key).filter { tensors[$0] == nil }
            if !missing.isEmpty {
                throw SafeTensorsError(.missingKey, "missing keys: \(missing.prefix(10).joined(separator: ", "))\(missing.count > 10 ? " and \(missing.count - 10) more" : "")")
            }
            let unexpected = tensors.keys.filter { $0.hasPrefix(prefix) && !want.contains($0) }.sorted()
            if !unexpected.isEmpty {
                throw SafeTensorsError(.unexpectedKey, "unexpected keys: \(unexpected.prefix(10).joined(separator: ", "))")
            }
        }
        for e in entries {
            guard let src = tensors[e.key] else { continue }
            switch e {
            case .parameter(let k, let t), .buffer(let k, let t):
                guard src.shape == t.shape else {
                    throw SafeTensorsError(.shapeMismatch, "\(k): file has shape \(src.shape), model has \(t.shape)")
                }
                t.assign(try src.tensor())
            case .counter(let k, _, let set):
                guard src.count == 1 else { throw SafeTensorsError(.shapeMismatch, "\(k): expected a scalar, got shape \(src.shape)") }
                set(try src.int64s()[0])
            }
        }
    }

    /// Writes the state dict to a safetensors file with `metadata`.
    public func save(to url: URL, metadata: [String: String] = [:]) throws(SafeTensorsError) {
        try SafeTensorsFile(tensors: stateDict(), metadata: metadata).write(to: url)
    }

    /// Loads a safetensors file written by `save` (or by PyTorch with torchvision keys).
    public func load(from url: URL, strict: Bool = true) throws(SafeTensorsError) {
        let file = try SafeTensorsFile.read(from: url)
        do { try loadStateDict(file.byName, strict: strict) } catch { var e = error; e.file = url.path; throw e }
    }
}
