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

/// An image being augmented in place: `c x h x w` floats in [0, 1], in memory the caller owns
/// (the view's slot in its batch), so a view allocates nothing the size of an image.
struct Planes {
    let c: Int, h: Int, w: Int
    let v: UnsafeMutablePointer<Float>
    /// Pixels per channel.
    var n: Int { h * w }
    var count: Int { c * h * w }
}

/// The augmentations, each a pure function of the image and a generator, computed in place.
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

    /// Image `index` as views start from, `height x width x channels` bytes: loaded (a streamed
    /// image decoded) once for all its views.
    public struct Source {
        var pixels: [UInt8]
        var height: Int, width: Int, channels: Int
    }

    public static func source(_ ds: ImageDataset, _ index: Int, _ cfg: AugmentConfig) -> Source {
        guard let stream = ds.stream, cfg.preset != .none else {
            return Source(pixels: ds.centerCrop(index), height: ds.height, width: ds.width, channels: ds.channels)
        }
        guard let d = stream.image(index) else {
            return Source(pixels: [UInt8](repeating: 0, count: ds.imageBytes), height: ds.height, width: ds.width, channels: ds.channels)
        }
        return Source(pixels: d.pixels, height: d.height, width: d.width, channels: d.channels)
    }

    /// One augmented view of a loaded image (see `view(_:_:_:rng:into:)`).
    public static func view<G: RandomNumberGenerator>(of source: Source, _ cfg: AugmentConfig, rng: inout G, into out: UnsafeMutablePointer<Float>) {
        let img = Planes(c: source.channels, h: cfg.size, w: cfg.size, v: out)
        if cfg.preset == .none {
            resizedCrop(source, top: 0, left: 0, height: source.height, width: source.width, into: img)
        } else {
            let (top, left, h, w) = cropBox(height: source.height, width: source.width, scale: cfg.cropScale, ratio: cfg.cropRatio, rng: &rng)
            resizedCrop(source, top: top, left: left, height: h, width: w, into: img)
            if cfg.preset == .v1 {
                // MoCo v1: crop, grayscale 0.2, jitter, flip.
                if rng.nextUnit() < cfg.grayscaleProbability { grayscale(img) }
                if rng.nextUnit() < cfg.jitter.p { colorJitter(img, cfg, rng: &rng) }
            } else {
                if rng.nextUnit() < cfg.jitter.p { colorJitter(img, cfg, rng: &rng) }
                if rng.nextUnit() < cfg.grayscaleProbability { grayscale(img) }
                if rng.nextUnit() < cfg.blurProbability {
                    let s = cfg.blurSigma
                    gaussianBlur(img, sigma: s.lowerBound + (s.upperBound - s.lowerBound) * rng.nextUnit())
                }
            }
            if rng.nextUnit() < 0.5 { flip(img) }
        }
        normalize(img, mean: cfg.mean, std: cfg.std)
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

    /// A byte's value in [0, 1] (`Float(b) / 255`).
    static let unit: [Float] = (0..<256).map { Float($0) / 255 }

    /// Bilinear resize of a crop box of the source bytes to the planes' size (half-pixel
    /// centers, as torchvision).
    static func resizedCrop(_ source: Source, top: Int, left: Int, height: Int, width: Int, into out: Planes) {
        let rows = Bilinear.Axis(outputs: out.h, start: top, length: height, resized: out.h, rounding: .scaleFirst)
        let columns = Bilinear.Axis(outputs: out.w, start: left, length: width, resized: out.w, rounding: .scaleFirst)
        let (c, w, ow, n) = (source.channels, source.width, out.w, out.n)
        source.pixels.withUnsafeBufferPointer { px in
            unit.withUnsafeBufferPointer { unit in
                Bilinear.resample(rows: rows, columns: columns, channels: c,
                                  sample: { y, x, ch in unit[Int(px[(y * w + x) * c + ch])] },
                                  store: { y, x, ch, v in out.v[ch * n + y * ow + x] = v })
            }
        }
    }

    /// ColorJitter: brightness, contrast, saturation, hue in a random order, each factor drawn
    /// uniformly. On one-channel images saturation and hue do nothing (as torchvision on 'L').
    static func colorJitter<G: RandomNumberGenerator>(_ img: Planes, _ cfg: AugmentConfig, rng: inout G) {
        let (b, c, s, h, _) = cfg.jitter
        var order = [0, 1, 2, 3]
        order.fisherYatesShuffle(using: &rng)
        func factor(_ strength: Double) -> Float { Float(max(0, 1 - strength) + (2 * strength) * rng.nextUnit()) }
        let v = img.v
        for op in order {
            switch op {
            case 0:
                let f = factor(b)
                for i in 0..<img.count { v[i] = min(1, max(0, v[i] * f)) }
            case 1:
                let f = factor(c)
                let mean = grayMean(img)
                for i in 0..<img.count { v[i] = min(1, max(0, (v[i] - mean) * f + mean)) }
            case 2:
                let f = factor(s)
                guard img.c == 3 else { continue }
                let (r, g, b, n) = (v, v + img.n, v + 2 * img.n, img.n)
                for p in 0..<n {
                    let y = luma(r[p], g[p], b[p])
                    r[p] = min(1, max(0, (r[p] - y) * f + y))
                    g[p] = min(1, max(0, (g[p] - y) * f + y))
                    b[p] = min(1, max(0, (b[p] - y) * f + y))
                }
            default:
                let shift = Float(-h + 2 * h * rng.nextUnit())
                guard img.c == 3 else { continue }
                hueShift(img, shift)
            }
        }
    }

    /// ITU-R 601-2 luma.
    @inline(__always) static func luma(_ r: Float, _ g: Float, _ b: Float) -> Float { 0.299 * r + 0.587 * g + 0.114 * b }

    /// The mean gray level (luma of RGB, the plane itself of one channel), summed in pixel order.
    static func grayMean(_ img: Planes) -> Float {
        let (v, n) = (img.v, img.n)
        var sum: Float = 0
        if img.c == 1 {
            for p in 0..<n { sum += v[p] }
        } else {
            for p in 0..<n { sum += luma(v[p], v[n + p], v[2 * n + p]) }
        }
        return sum / Float(max(n, 1))
    }

    /// RGB to luma in all three channels; one-channel images are already gray.
    static func grayscale(_ img: Planes) {
        guard img.c == 3 else { return }
        let (r, g, b) = (img.v, img.v + img.n, img.v + 2 * img.n)
        for p in 0..<img.n {
            let y = luma(r[p], g[p], b[p])
            r[p] = y; g[p] = y; b[p] = y
        }
    }

    /// Hue rotated by `shift` turns through HSV.
    static func hueShift(_ img: Planes, _ shift: Float) {
        let (rp, gp, bp) = (img.v, img.v + img.n, img.v + 2 * img.n)
        for p in 0..<img.n {
            let r = rp[p], g = gp[p], b = bp[p]
            let mx = max(r, g, b), mn = min(r, g, b), d = mx - mn
            var hue: Float = 0
            if d > 0 {
                // |g - b| <= d, so the remainder by 6 (as torchvision's) is the quotient itself.
                if mx == r { hue = (g - b) / d }
                else if mx == g { hue = (b - r) / d + 2 }
                else { hue = (r - g) / d + 4 }
                hue /= 6
            }
            hue += shift
            if abs(hue) >= 1 { hue = hue.truncatingRemainder(dividingBy: 1) }   // fmod's own result below 1
            if hue < 0 { hue += 1 }
            let s: Float = mx > 0 ? d / mx : 0, v = mx
            let h6 = hue * 6, i = Int(h6) % 6, f = h6 - Float(Int(h6))
            let pp = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f))
            switch i {
            case 0: rp[p] = v; gp[p] = t; bp[p] = pp
            case 1: rp[p] = q; gp[p] = v; bp[p] = pp
            case 2: rp[p] = pp; gp[p] = v; bp[p] = t
            case 3: rp[p] = pp; gp[p] = q; bp[p] = v
            case 4: rp[p] = t; gp[p] = pp; bp[p] = v
            default: rp[p] = v; gp[p] = pp; bp[p] = q
            }
        }
    }

    /// Separable Gaussian blur, kernel radius ceil(3σ), edges replicated: rows in place through a
    /// padded copy of each row, then columns in blocks through a padded copy of the block. Each
    /// output sums its taps in kernel order.
    static func gaussianBlur(_ img: Planes, sigma: Double) {
        let r = max(1, Int((3 * sigma).rounded(.up)))
        var k = (-r...r).map { Float(exp(-Double($0 * $0) / (2 * sigma * sigma))) }
        let total = k.reduce(0, +)
        k = k.map { $0 / total }
        let (h, w, taps, block) = (img.h, img.w, 2 * r + 1, 64)
        var pad = [Float](repeating: 0, count: w + 2 * r)
        var columns = [Float](repeating: 0, count: (h + 2 * r) * block)
        k.withUnsafeBufferPointer { k in
            pad.withUnsafeMutableBufferPointer { pad in
                columns.withUnsafeMutableBufferPointer { columns in
                    for ch in 0..<img.c {
                        let plane = img.v + ch * img.n
                        for y in 0..<h {
                            let row = plane + y * w
                            for i in 0..<(w + 2 * r) { pad[i] = row[min(w - 1, max(0, i - r))] }
                            for x in 0..<w { row[x] = 0 }
                            for t in 0..<taps {
                                let kt = k[t], src = pad.baseAddress! + t
                                for x in 0..<w { row[x] += kt * src[x] }
                            }
                        }
                        for x0 in stride(from: 0, to: w, by: block) {
                            let width = min(block, w - x0)
                            for i in 0..<(h + 2 * r) {
                                let src = plane + min(h - 1, max(0, i - r)) * w + x0, dst = columns.baseAddress! + i * block
                                for j in 0..<width { dst[j] = src[j] }
                            }
                            for y in 0..<h {
                                let row = plane + y * w + x0
                                for j in 0..<width { row[j] = 0 }
                                for t in 0..<taps {
                                    let kt = k[t], src = columns.baseAddress! + (y + t) * block
                                    for j in 0..<width { row[j] += kt * src[j] }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    static func flip(_ img: Planes) {
        for row in 0..<(img.c * img.h) {
            let p = img.v + row * img.w
            for x in 0..<(img.w / 2) { (p[x], p[img.w - 1 - x]) = (p[img.w - 1 - x], p[x]) }
        }
    }

    static func normalize(_ img: Planes, mean: [Float], std: [Float]) {
        for ch in 0..<img.c {
            let m = mean[min(ch, mean.count - 1)], s = std[min(ch, std.count - 1)], p = img.v + ch * img.n
            for i in 0..<img.n { p[i] = (p[i] - m) / s }
        }
    }
}
