import Foundation

/// A problem reading a dataset: the file and what is wrong with it.
public struct DataError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let message: String
    public init(file: String, _ message: String) { self.file = file; self.message = message }
    public var description: String { "\(file): \(message)" }
}

/// Images of one size held in memory as bytes, `count x height x width x channels` (HWC per
/// image, channels 1 or 3), with optional integer labels; or, for datasets larger than memory,
/// a `stream` that decodes each image when a view needs it (then `pixels` is empty and
/// `height x width` is the size views and center crops are made at).
public struct ImageDataset: Sendable {
    public var count: Int
    public var height: Int
    public var width: Int
    public var channels: Int
    public var pixels: [UInt8]
    public var labels: [Int]?
    /// Class names by label, where the format has them (image folders).
    public var classNames: [String]?
    /// Where the images are decoded from, for a streamed dataset.
    public var stream: ImageStream?

    /// A streamed dataset: `stream.count` images, views made at `stream.size`.
    public init(stream: ImageStream) {
        count = stream.count; height = stream.size; width = stream.size; channels = stream.channels; pixels = []
        labels = stream.index.labels.map { Array($0.prefix(stream.count)) }
        classNames = stream.index.classNames
        self.stream = stream
    }

    public init(count: Int, height: Int, width: Int, channels: Int, pixels: [UInt8], labels: [Int]? = nil, classNames: [String]? = nil) {
        precondition(pixels.count == count * height * width * channels, "pixel buffer does not match \(count)x\(height)x\(width)x\(channels)")
        precondition(labels == nil || labels!.count == count)
        self.count = count; self.height = height; self.width = width; self.channels = channels
        self.pixels = pixels; self.labels = labels; self.classNames = classNames
    }

    public var imageBytes: Int { height * width * channels }

    /// The first `n` images (all when `n` is nil or larger).
    public func prefix(_ n: Int?) -> ImageDataset {
        guard let n, n < count else { return self }
        if let stream {
            return ImageDataset(stream: ImageStream(index: stream.index, root: stream.root, channels: channels, size: stream.size,
                                                    cacheBytes: stream.cacheBytes, limit: n))
        }
        return ImageDataset(count: n, height: height, width: width, channels: channels,
                            pixels: Array(pixels[0..<(n * imageBytes)]), labels: labels.map { Array($0[0..<n]) },
                            classNames: classNames)
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    /// (A streamed dataset: over the center crops of up to 1,000 images evenly spread.)
    public func channelStatistics() -> (mean: [Double], std: [Double]) {
        if stream != nil {
            let picks = Array(Set((0..<min(count, 1000)).map { $0 * count / min(count, 1000) })).sorted()
            var crops: [UInt8] = []
            for i in picks { crops += centerCrop(i) }
            return ImageDataset(count: picks.count, height: height, width: width, channels: channels, pixels: crops).channelStatistics()
        }
        var sum = [Double](repeating: 0, count: channels), sq = [Double](repeating: 0, count: channels)
        pixels.withUnsafeBufferPointer { p in
            for i in 0..<p.count {
                let v = Double(p[i]) / 255
                sum[i % channels] += v
                sq[i % channels] += v * v
            }
        }
        let n = Double(max(count * height * width, 1))
        let mean = sum.map { $0 / n }
        let std = zip(sq, mean).map { max($0 / n - $1 * $1, 0).squareRoot() }
        return (mean, std)
    }
}

extension ImageDataset {
    /// Image `i` as stored, or (streamed) resized with its shorter side to `height` and cropped
    /// at the center: `height x width x channels` bytes.
    public func centerCrop(_ i: Int) -> [UInt8] {
        guard let stream else { return Array(pixels[(i * imageBytes)..<((i + 1) * imageBytes)]) }
        guard let img = stream.image(i) else { return [UInt8](repeating: 0, count: imageBytes) }
        return Resize.squareCrop(img, size: height, channels: channels)
    }
}
