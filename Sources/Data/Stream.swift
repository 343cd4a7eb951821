import CTurboJPEG
import Foundation
import Synchronization

/// The images of a dataset too large for memory (an image folder, tar shards), decoded when a
/// view needs them: the loader's workers call `image(_:)` from their threads.
///
/// - A JPEG much larger than the views is downscaled in the DCT domain as it is decoded (to the
///   smallest of turbojpeg's scales whose shorter side keeps at least twice `size`).
/// - Decoded images are kept in a cache with a byte budget (oldest out first), so memory stays
///   bounded whatever the dataset's size, and a dataset that fits is decoded once.
/// - An image that cannot be used (empty, truncated, not an image, a decompression bomb, gone)
///   is recorded once by name and replaced by the next usable one in index order, so a view
///   stays a function of (seed, epoch, index, view) and resume stays exact.
public final class ImageStream: Sendable {
    public let index: ImageIndex
    /// The data root the files must stay inside (see `Readers.openFile`).
    public let root: String?
    /// Channels every image is converted to (1: luma; 3: gray replicated).
    public let channels: Int
    /// The side length of the views and center crops made from these images.
    public let size: Int
    /// How many samples are used (a spec's `limit`).
    public let count: Int
    /// The decoded-image cache's budget in bytes.
    public let cacheBytes: Int
    private let cache: Mutex<DecodedCache>
    private let log: Mutex<ErrorLog>

    public init(index: ImageIndex, root: String?, channels: Int, size: Int, cacheBytes: Int, limit: Int? = nil) {
        self.index = index; self.root = root; self.channels = channels; self.size = size
        count = min(index.count, limit ?? .max)
        self.cacheBytes = cacheBytes
        cache = Mutex(DecodedCache(budget: cacheBytes))
        log = Mutex(ErrorLog(count: count, indexProblems: index.problems.map(\.description)))
    }

    /// Sample `i`'s image, or, when it cannot be used, the next usable one (wrapping around);
    /// nil only when no image at all can be used.
    public func image(_ i: Int) -> Readers.Image? {
        for k in 0..<count {
            let j = (i + k) % count
            if let img = decoded(j) { return img }
        }
        return nil
    }

    /// Sample `i` decoded (or from the cache); nil when it cannot be used (recorded).
    func decoded(_ i: Int) -> Readers.Image? {
        if let hit = cache.withLock({ $0.get(i) }) { return hit }
        if log.withLock({ $0.isBad(i) }) { return nil }
        do {
            let bytes = try index.bytes(of: i, within: root)
            let img = convert(try Self.decode(bytes, file: index.names[i], minSide: 2 * size), to: channels)
            log.withLock { $0.seen(i) }
            cache.withLock { $0.put(i, img) }
            return img
        } catch {
            log.withLock { $0.bad(i, "\(DataError(file: index.names[i], error.message))") }
            return nil
        }
    }

    /// Unusable samples found so far and samples tried (problems found while indexing count as both).
    public var errorCounts: (bad: Int, tried: Int) { log.withLock { ($0.badCount, $0.triedCount + $0.indexProblems) } }

    /// Unusable samples found and not yet taken, each with a message naming its file.
    public func takeNewErrors() -> [DataErrorReport] { log.withLock { $0.takePending() } }

    /// Bytes of decoded images held now.
    public var cachedBytes: Int { cache.withLock { $0.bytes } }

    // MARK: - Decoding

    /// Decodes a PNG or JPEG; a JPEG whose shorter side is at least twice `minSide` is decoded
    /// at the smallest DCT scale that keeps it at least `minSide`.
    static func decode(_ bytes: [UInt8], file: String, minSide: Int) throws(DataError) -> Readers.Image {
        let header = try ImageProbe.header(bytes, file: file)
        guard header.format == .jpeg, min(header.width, header.height) >= 2 * minSide else { return try Readers.decode(bytes, file: file) }
        return try Readers.decodeJPEG(bytes, file: file, scaledTo: scale(width: header.width, height: header.height, minSide: minSide))
    }

    /// turbojpeg's smallest scaling factor keeping the shorter side at least `minSide`.
    public static func scale(width: Int, height: Int, minSide: Int) -> (num: Int, denom: Int) {
        var n: Int32 = 0
        guard let factors = tjGetScalingFactors(&n) else { return (1, 1) }
        var best = (num: 1, denom: 1)
        for k in 0..<Int(n) {
            let f = factors[k]
            let (num, denom) = (Int(f.num), Int(f.denom))
            guard num <= denom else { continue }   // no upscaling
            let side = (min(width, height) * num + denom - 1) / denom
            if side >= minSide && num * best.denom < best.num * denom { best = (num, denom) }
        }
        return best
    }

    /// The image with `channels` channels (luma with ITU-R 601-2 weights, or gray replicated).
    func convert(_ img: Readers.Image, to channels: Int) -> Readers.Image {
        guard img.channels != channels else { return img }
        let n = img.width * img.height
        var out = [UInt8](repeating: 0, count: n * channels)
        if channels == 1 {
            for p in 0..<n {
                let r = Double(img.pixels[3 * p]), g = Double(img.pixels[3 * p + 1]), b = Double(img.pixels[3 * p + 2])
                out[p] = UInt8(max(0, min(255, (0.299 * r + 0.587 * g + 0.114 * b).rounded())))
            }
        } else {
            for p in 0..<n { let v = img.pixels[p]; out[3 * p] = v; out[3 * p + 1] = v; out[3 * p + 2] = v }
        }
        return Readers.Image(width: img.width, height: img.height, channels: channels, pixels: out)
    }
}

/// Decoded images by sample, within a byte budget: the oldest goes first when a new one does not fit.
struct DecodedCache {
    let budget: Int
    private(set) var bytes = 0
    private var images: [Int: Readers.Image] = [:]
    private var order: [Int] = []
    private var head = 0

    init(budget: Int) { self.budget = max(0, budget) }

    func get(_ i: Int) -> Readers.Image? { images[i] }

    mutating func put(_ i: Int, _ img: Readers.Image) {
        let size = img.pixels.count
        guard size <= budget, images[i] == nil else { return }
        while bytes + size > budget && head < order.count {
            if let old = images.removeValue(forKey: order[head]) { bytes -= old.pixels.count }
            head += 1
        }
        if head > 4096 && head * 2 > order.count { order.removeFirst(head); head = 0 }
        images[i] = img
        order.append(i)
        bytes += size
    }
}

/// An unusable sample: its index, or nil for a problem found while indexing (a shard cut
/// short), and a message naming its file.
public struct DataErrorReport: Sendable, Hashable, Codable {
    public var sample: Int?
    public var message: String
    public init(sample: Int?, message: String) { self.sample = sample; self.message = message }
}

/// Which samples were tried and which could not be used, with the reports not yet taken.
struct ErrorLog {
    private var tried: [UInt64]
    private var badSamples: [Int: String] = [:]
    private(set) var triedCount = 0
    private var pending: [DataErrorReport]
    let indexProblems: Int

    init(count: Int, indexProblems: [String]) {
        tried = [UInt64](repeating: 0, count: (count + 63) / 64)
        pending = indexProblems.map { DataErrorReport(sample: nil, message: $0) }
        self.indexProblems = indexProblems.count
    }

    var badCount: Int { badSamples.count + indexProblems }

    func isBad(_ i: Int) -> Bool { badSamples[i] != nil }

    mutating func seen(_ i: Int) {
        let (w, b) = (i / 64, UInt64(1) << UInt64(i % 64))
        if tried[w] & b == 0 { tried[w] |= b; triedCount += 1 }
    }

    mutating func bad(_ i: Int, _ message: String) {
        guard badSamples[i] == nil else { return }
        seen(i)
        badSamples[i] = message
        pending.append(DataErrorReport(sample: i, message: message))
    }

    mutating func takePending() -> [DataErrorReport] {
        defer { pending.removeAll() }
        return pending
    }
}

extension Readers {
    /// Encodes HWC pixels (1 or 3 channels) as a baseline JPEG at `quality` (for fixtures and
    /// benchmarks).
    public static func encodeJPEG(_ pixels: [UInt8], width: Int, height: Int, channels: Int, quality: Int = 90) throws(DataError) -> [UInt8] {
        guard let handle = tjInitCompress() else { throw DataError(file: "", "cannot start the JPEG encoder") }
        defer { tjDestroy(handle) }
        var out: UnsafeMutablePointer<UInt8>?
        var size: UInt = 0
        let rc = pixels.withUnsafeBufferPointer { p in
            tjCompress2(handle, p.baseAddress, Int32(width), 0, Int32(height), channels == 1 ? Int32(TJPF_GRAY.rawValue) : Int32(TJPF_RGB.rawValue),
                        &out, &size, channels == 1 ? Int32(TJSAMP_GRAY.rawValue) : Int32(TJSAMP_420.rawValue), Int32(quality), 0)
        }
        defer { if let out { tjFree(out) } }
        guard rc == 0, let out else { throw DataError(file: "", "JPEG encoding failed: \(String(cString: tjGetErrorStr2(handle)))") }
        return Array(UnsafeBufferPointer(start: out, count: Int(size)))
    }
}
