import Autograd
import Foundation

/// The augmentation recipe for one view (MoCo v2 "aug+" or MoCo v1), as in the papers' code.
public struct AugmentConfig: Sendable, Hashable, Codable {
    public enum Preset: String, Sendable, Codable, CaseIterable { case v2, v1, none }
    public var preset: Preset
    /// Output side length.
    public var size: Int
    /// Per-channel normalization applied last.
    public var mean: [Float]
    public var std: [Float]

    public init(preset: Preset, size: Int, mean: [Float], std: [Float]) {
        self.preset = preset; self.size = size; self.mean = mean; self.std = std
    }

    // torchvision's defaults for the pieces of the recipes.
    public var cropScale: ClosedRange<Double> { 0.2...1.0 }
    public var cropRatio: ClosedRange<Double> { (3.0 / 4.0)...(4.0 / 3.0) }
    /// ColorJitter strengths (brightness, contrast, saturation, hue) and their probability.
    public var jitter: (Double, Double, Double, Double, p: Double) {
        preset == .v2 ? (0.4, 0.4, 0.4, 0.1, 0.8) : (0.4, 0.4, 0.4, 0.4, 1.0)
    }
    public var grayscaleProbability: Double { 0.2 }
    public var blurProbability: Double { preset == .v2 ? 0.5 : 0 }
    public var blurSigma: ClosedRange<Double> { 0.1...2.0 }
}

/// A float image being augmented: `channels x height x width`, values in [0, 1].
struct FloatImage {
    var c: Int, h: Int, w: Int
    var v: [Float]
    subscript(ch: Int, y: Int, x: Int) -> Float {
        get { v[(ch * h + y) * w + x] }
        set { v[(ch * h + y) * w + x] = newValue }
    }
}

/// The augmentations, each a pure function of the image and a generator.
public enum Augment {
    /// One augmented view of image `index` of `ds`, written normalized into `out`
    /// (`channels x size x size` floats). With preset `none`, only resize and normalize.
    ///
    /// A streamed dataset's crops come from the whole decoded image, as in the papers; with
    /// preset `none` its image is resized (shorter side) and center-cropped.
    public static func view<G: RandomNumberGenerator>(_ ds: ImageDataset, _ index: Int, _ cfg: AugmentConfig,
                                                      rng: inout G, into out: UnsafeMutablePointer<Float>) {
        view(of: source(ds, index, cfg), cfg, rng: &rng, into: out)
    }

    /// Image `index` as views start from: loaded (a streamed image decoded) once for all its views.
    public struct Source { var image: FloatImage }

    public static func source(_ ds: ImageDataset, _ index: Int, _ cfg: AugmentConfig) -> Source {
        if ds.stream != nil && cfg.preset == .none {
            let centered = ImageDataset(count: 1, height: ds.height, width: ds.width, channels: ds.channels, pixels: ds.centerCrop(index))
            return Source(image: load(centered, 0))
        }
        return Source(image: load(ds, index))
    }

    /// One augmented view of a loaded image (see `view(_:_:_:rng:into:)`).
    public static func view<G: RandomNumberGenerator>(of source: Source, _ cfg: AugmentConfig, rng: inout G, into out: UnsafeMutablePointer<Float>) {
        var img = source.image
        if cfg.preset == .none {
            img = resizedCrop(img, top: 0, left: 0, height: img.h, width: img.w, size: cfg.size)
        } else {
            let (top, left, h, w) = cropBox(height: img.h, width: img.w, scale: cfg.cropScale, ratio: cfg.cropRatio, rng: &rng)
            img = resizedCrop(img, top: top, left: left, height: h, width: w, size: cfg.size)
            if cfg.preset == .v1 {
                // MoCo v1: crop, grayscale 0.2, jitter, flip.
                if rng.nextUnit() < cfg.grayscaleProbability { grayscale(&img) }
                if rng.nextUnit() < cfg.jitter.p { colorJitter(&img, cfg, rng: &rng) }
            } else {
                if rng.nextUnit() < cfg.jitter.p { colorJitter(&img, cfg, rng: &rng) }
                if rng.nextUnit() < cfg.grayscaleProbability { grayscale(&img) }
                if rng.nextUnit() < cfg.blurProbability {
                    let s = cfg.blurSigma
                    gaussianBlur(&img, sigma: s.lowerBound + (s.upperBound - s.lowerBound) * rng.nextUnit())
                }
            }
            if rng.nextUnit() < 0.5 { flip(&img) }
        }
        normalize(img, mean: cfg.mean, std: cfg.std, into: out)
    }

    static func load(_ ds: ImageDataset, _ index: Int) -> FloatImage {
        if let stream = ds.stream {
            guard let d = stream.image(index) else { return FloatImage(c: ds.channels, h: ds.height, w: ds.width, v: [Float](repeating: 0, count: ds.imageBytes)) }
            return load(ImageDataset(count: 1, height: d.height, width: d.width, channels: d.channels, pixels: d.pixels), 0)
        }
        var img = FloatImage(c: ds.channels, h: ds.height, w: ds.width, v: [Float](repeating: 0, count: ds.imageBytes))
        let base = index * ds.imageBytes
        ds.pixels.withUnsafeBufferPointer { p in
            for y in 0..<ds.height {
                for x in 0..<ds.width {
                    for ch in 0..<ds.channels {
                        img[ch, y, x] = Float(p[base + (y * ds.width + x) * ds.channels + ch]) / 255
                    }
                }
            }
        }
        return img
    }

    /// torchvision's `RandomResizedCrop.get_params`: ten tries at a random area and aspect ratio,
    /// then a centered crop with the ratio clamped.
    static func cropBox<G: RandomNumberGenerator>(height: Int, width: Int, scale: ClosedRange<Double>, ratio: ClosedRange<Double>,
                                                  rng: inout G) -> (Int, Int, Int, Int) {
        let area = Double(height * width)
        let logRatio = log(ratio.lowerBound)...log(ratio.upperBound)
        for _ in 0..<10 {
            let target = area * (scale.lowerBound + (scale.upperBound - scale.lowerBound) * rng.nextUnit())
            let aspect = exp(logRatio.lowerBound + (logRatio.upperBound - logRatio.lowerBound) * rng.nextUnit())
            let w = Int((target * aspect).squareRoot().rounded()), h = Int((target / aspect).squareRoot().rounded())
            if w > 0 && w <= width && h > 0 && h <= height {
                let top = Int(rng.next() % UInt64(height - h + 1)), left = Int(rng.next() % UInt64(width - w + 1))
                return (top, left, h, w)
            }
        }
        let inRatio = Double(width) / Double(height)
        var w = width, h = height
        if inRatio < ratio.lowerBound { h = Int((Double(w) / ratio.lowerBound).rounded()) }
        else if inRatio > ratio.upperBound { w = Int((Double(h) * ratio.upperBound).rounded()) }
        return ((height - h) / 2, (width - w) / 2, h, w)
    }

    /// Bilinear resize of a crop box to `size x size` (half-pixel centers, as torchvision).
    static func resizedCrop(_ img: FloatImage, top: Int, left: Int, height: Int, width: Int, size: Int) -> FloatImage {
        var out = FloatImage(c: img.c, h: size, w: size, v: [Float](repeating: 0, count: img.c * size * size))
        Bilinear.resample(rows: Bilinear.Axis(outputs: size, start: top, length: height, resized: size, rounding: .scaleFirst),
                          columns: Bilinear.Axis(outputs: size, start: left, length: width, resized: size, rounding: .scaleFirst),
                          channels: img.c, sample: { y, x, ch in img[ch, y, x] }, store: { y, x, ch, v in out[ch, y, x] = v })
        return out
    }

    /// ColorJitter: brightness, contrast, saturation, hue in a random order, each factor drawn
    /// uniformly. On one-channel images saturation and hue do nothing (as torchvision on 'L').
    static func colorJitter<G: RandomNumberGenerator>(_ img: inout FloatImage, _ cfg: AugmentConfig, rng: inout G) {
        let (b, c, s, h, _) = cfg.jitter
        var order = [0, 1, 2, 3]
        order.fisherYatesShuffle(using: &rng)
        func factor(_ strength: Double) -> Float { Float(max(0, 1 - strength) + (2 * strength) * rng.nextUnit()) }
        for op in order {
            switch op {
            case 0:
                let f = factor(b)
                for i in 0..<img.v.count { img.v[i] = min(1, max(0, img.v[i] * f)) }
            case 1:
                let f = factor(c)
                let mean = grayMean(img)
                for i in 0..<img.v.count { img.v[i] = min(1, max(0, (img.v[i] - mean) * f + mean)) }
            case 2:
                let f = factor(s)
                guard img.c == 3 else { continue }
                let g = grayPlane(img)
                for ch in 0..<3 { for p in 0..<g.count { img.v[ch * g.count + p] = min(1, max(0, (img.v[ch * g.count + p] - g[p]) * f + g[p])) } }
            default:
                let shift = Float(-h + 2 * h * rng.nextUnit())
                guard img.c == 3 else { continue }
                hueShift(&img, shift)
            }
        }
    }

    static func grayPlane(_ img: FloatImage) -> [Float] {
        let n = img.h * img.w
        if img.c == 1 { return Array(img.v[0..<n]) }
        return (0..<n).map { 0.299 * img.v[$0] + 0.587 * img.v[n + $0] + 0.114 * img.v[2 * n + $0] }
    }

    static func grayMean(_ img: FloatImage) -> Float {
        let g = grayPlane(img)
        return g.reduce(0, +) / Float(max(g.count, 1))
    }

    /// RGB to luminance in all three channels; one-channel images are already gray.
    static func grayscale(_ img: inout FloatImage) {
        guard img.c == 3 else { return }
        let g = grayPlane(img)
        for ch in 0..<3 { for p in 0..<g.count { img.v[ch * g.count + p] = g[p] } }
    }

    static func hueShift(_ img: inout FloatImage, _ shift: Float) {
        let n = img.h * img.w
        for p in 0..<n {
            let r = img.v[p], g = img.v[n + p], b = img.v[2 * n + p]
            let mx = max(r, g, b), mn = min(r, g, b), d = mx - mn
            var hue: Float = 0
            if d > 0 {
                if mx == r { hue = ((g - b) / d).truncatingRemainder(dividingBy: 6) }
                else if mx == g { hue = (b - r) / d + 2 }
                else { hue = (r - g) / d + 4 }
                hue /= 6
            }
            hue = (hue + shift).truncatingRemainder(dividingBy: 1)
            if hue < 0 { hue += 1 }
            let s: Float = mx > 0 ? d / mx : 0, v = mx
            let h6 = hue * 6, i = Int(h6) % 6, f = h6 - Float(Int(h6))
            let pp = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f))
            let (nr, ng, nb): (Float, Float, Float) = [(v, t, pp), (q, v, pp), (pp, v, t), (pp, q, v), (t, pp, v), (v, pp, q)][i]
            img.v[p] = nr; img.v[n + p] = ng; img.v[2 * n + p] = nb
        }
    }

    /// Separable Gaussian blur, kernel radius ceil(3σ), edges replicated.
    static func gaussianBlur(_ img: inout FloatImage, sigma: Double) {
        let r = max(1, Int((3 * sigma).rounded(.up)))
        var k = (-r...r).map { Float(exp(-Double($0 * $0) / (2 * sigma * sigma))) }
        let total = k.reduce(0, +)
        k = k.map { $0 / total }
        var tmp = img
        for ch in 0..<img.c {
            for y in 0..<img.h {
                for x in 0..<img.w {
                    var s: Float = 0
                    for d in -r...r { s += k[d + r] * img[ch, y, min(img.w - 1, max(0, x + d))] }
                    tmp[ch, y, x] = s
                }
            }
            for y in 0..<img.h {
                for x in 0..<img.w {
                    var s: Float = 0
                    for d in -r...r { s += k[d + r] * tmp[ch, min(img.h - 1, max(0, y + d)), x] }
                    img[ch, y, x] = s
                }
            }
        }
    }

    static func flip(_ img: inout FloatImage) {
        for ch in 0..<img.c {
            for y in 0..<img.h {
                for x in 0..<(img.w / 2) {
                    let t = img[ch, y, x]
                    img[ch, y, x] = img[ch, y, img.w - 1 - x]
                    img[ch, y, img.w - 1 - x] = t
                }
            }
        }
    }

    static func normalize(_ img: FloatImage, mean: [Float], std: [Float], into out: UnsafeMutablePointer<Float>) {
        let n = img.h * img.w
        for ch in 0..<img.c {
            let m = mean[min(ch, mean.count - 1)], s = std[min(ch, std.count - 1)]
            for p in 0..<n { out[ch * n + p] = (img.v[ch * n + p] - m) / s }
        }
    }
}
