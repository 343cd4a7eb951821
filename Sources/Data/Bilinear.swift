/// Bilinear resampling with half-pixel centers (PyTorch's `align_corners=False`) and no
/// antialiasing, as torchvision's `resize(..., antialias=False)` on tensors: output index `i` of
/// a `resized`-long axis samples source coordinate `(i + 0.5) · length / resized − 0.5`, clamped
/// to the source, between its two neighbours. Used by the augmentations' crop-and-resize and by
/// the image-folder reader's shorter-side resize with center crop.
enum Bilinear {
    /// How the source coordinate is evaluated. The two orders are the same mapping but round
    /// differently in the last bit, which can move an 8-bit pixel across a rounding boundary;
    /// each caller keeps the one it has always used, so stored datasets and augmented views stay
    /// bit-for-bit what they were.
    enum Rounding {
        /// `(i + 0.5) · (length / resized) − 0.5`, the scale computed first (the augmentations).
        case scaleFirst
        /// `(i + 0.5) / resized · length − 0.5` (the image-folder reader).
        case divideFirst
    }

    /// One axis of a resampling: for each output index, the two source indices it blends and
    /// the weight of the second.
    struct Axis {
        var taps: [(i0: Int, i1: Int, weight: Double)]

        /// `outputs` samples along `start..<(start + length)` of the source, resized to `resized`
        /// samples and cropped from `offset` on (`resized == outputs`, `offset == 0`: a plain resize).
        init(outputs: Int, start: Int = 0, length: Int, resized: Int, offset: Int = 0, rounding: Rounding) {
            let scale = Double(length) / Double(resized)
            taps = (0..<outputs).map { i in
                let f = switch rounding {
                case .scaleFirst: (Double(i + offset) + 0.5) * scale - 0.5
                case .divideFirst: (Double(i + offset) + 0.5) / Double(resized) * Double(length) - 0.5
                }
                // Past the first or last center the nearest edge sample is used (weight 0 on the
                // left edge; on the right both taps are the last sample).
                let i0 = max(0, min(length - 1, Int(f.rounded(.down)))), i1 = min(length - 1, i0 + 1)
                return (start + i0, start + i1, max(0, min(1, f - Double(i0))))
            }
        }
    }

    /// Resamples `channels` planes: for every output `(y, x)` and channel, the four source values
    /// `sample(y, x, channel)` at the taps of `rows` and `columns`, blended in `T` arithmetic,
    /// go to `store(y, x, channel, value)`. Outputs are visited row by row, channels innermost.
    @inline(__always)
    static func resample<T: BinaryFloatingPoint>(rows: Axis, columns: Axis, channels: Int,
                                                 sample: (_ y: Int, _ x: Int, _ channel: Int) -> T,
                                                 store: (_ y: Int, _ x: Int, _ channel: Int, _ value: T) -> Void) {
        for (y, r) in rows.taps.enumerated() {
            let wy = T(r.weight)
            for (x, c) in columns.taps.enumerated() {
                let wx = T(c.weight)
                for ch in 0..<channels {
                    let a = sample(r.i0, c.i0, ch), b = sample(r.i0, c.i1, ch)
                    let d0 = sample(r.i1, c.i0, ch), d1 = sample(r.i1, c.i1, ch)
                    store(y, x, ch, (1 - wy) * ((1 - wx) * a + wx * b) + wy * ((1 - wx) * d0 + wx * d1))
                }
            }
        }
    }
}
