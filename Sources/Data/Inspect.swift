import CTurboJPEG
import Foundation

/// An image's format, size and channels, read from its header alone.
public struct ImageHeader: Sendable, Equatable {
    public enum Format: String, Sendable, Codable { case jpeg, png }
    public var format: Format
    public var width: Int
    public var height: Int
    public var channels: Int
    public init(format: Format, width: Int, height: Int, channels: Int) {
        self.format = format; self.width = width; self.height = height; self.channels = channels
    }
}

/// Reads image headers without decoding, and refuses what must never be decoded.
public enum ImageProbe {
    /// The most pixels mocod decodes in one image (8192 x 8192). A header declaring more is a
    /// decompression bomb (or a photo far beyond what training needs) and is refused before any
    /// memory is set aside for it.
    public static let maxPixels = 1 << 26

    public static func header(_ bytes: [UInt8], file: String) throws(DataError) -> ImageHeader {
        guard !bytes.isEmpty else { throw DataError(file: file, "empty file") }
        let header: ImageHeader
        if bytes.count >= 8, bytes[0..<8].elementsEqual([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) {
            guard bytes.count >= 26, bytes[12..<16].elementsEqual(Array("IHDR".utf8)) else {
                throw DataError(file: file, "not a readable PNG: no IHDR header (cut short or corrupt)")
            }
            func be32(_ i: Int) -> Int { Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3]) }
            let colorType = bytes[25]
            guard [0, 2, 3, 4, 6].contains(colorType) else { throw DataError(file: file, "not a readable PNG: color type \(colorType)") }
            header = ImageHeader(format: .png, width: be32(16), height: be32(20), channels: colorType == 0 || colorType == 4 ? 1 : 3)
        } else if bytes.count >= 3, bytes[0] == 0xFF, bytes[1] == 0xD8, bytes[2] == 0xFF {
            guard let handle = tjInitDecompress() else { throw DataError(file: file, "cannot start the JPEG decoder") }
            defer { tjDestroy(handle) }
            var w: Int32 = 0, h: Int32 = 0, subsamp: Int32 = 0, colorspace: Int32 = 0
            var src = bytes
            let rc = src.withUnsafeMutableBufferPointer { tjDecompressHeader3(handle, $0.baseAddress, UInt($0.count), &w, &h, &subsamp, &colorspace) }
            guard rc == 0 else { throw DataError(file: file, "not a readable JPEG: \(String(cString: tjGetErrorStr2(handle)))") }
            header = ImageHeader(format: .jpeg, width: Int(w), height: Int(h), channels: colorspace == TJCS_GRAY.rawValue ? 1 : 3)
        } else {
            throw DataError(file: file, "neither a PNG nor a JPEG (unrecognised signature)")
        }
        guard header.width > 0, header.height > 0 else { throw DataError(file: file, "declares an empty image (\(header.width)x\(header.height))") }
        guard header.width.multipliedReportingOverflow(by: header.height).partialValue <= maxPixels, header.width <= 1 << 20, header.height <= 1 << 20 else {
            throw DataError(file: file, "declares \(header.width)x\(header.height) pixels, more than the \(maxPixels) (8192x8192) mocod decodes "
                + "(a decompression bomb, or far beyond what training needs)")
        }
        return header
    }
}

/// What a dataset holds, as `moco data inspect` and `GET /v1/datasets` report it: its format
/// and size, the range of image sizes, its classes and the images that cannot be used, by name.
public struct DatasetReport: Codable, Sendable, Equatable {
    public struct ClassCount: Codable, Sendable, Equatable {
        public var name: String
        public var count: Int
        public init(name: String, count: Int) { self.name = name; self.count = count }
    }
    public var format: String
    public var path: String
    /// Samples found.
    public var count: Int
    /// Samples whose image could be read (headers, or whole images with `decoded`).
    public var readable: Int
    public var min_width: Int?
    public var max_width: Int?
    public var min_height: Int?
    public var max_height: Int?
    /// Readable images by channels: gray (1) and color (3).
    public var gray: Int
    public var color: Int
    public var classes: [ClassCount]?
    /// Unusable samples (and problems found while indexing), and the first of them by name.
    public var errors: Int
    public var first_errors: [String]
    /// Whether every image was decoded whole (finds truncated files), or only its header read.
    public var decoded: Bool
    /// Samples whose image was read: all of them, or (a quick look) an even spread of some;
    /// `readable`, the sizes, the channel counts and the errors are then those of the spread.
    public var probed: Int?

    /// At most this many errors are listed by name.
    public static let listedErrors = 20

    /// Reads every sample of `index` (its header, or the whole image when `decode`), in order.
    /// `sample`: read only that many samples, spread evenly (class counts stay exact: they come
    /// from the index).
    public static func inspect(_ index: ImageIndex, path: String, decode: Bool, within root: String? = nil, sample: Int? = nil) -> DatasetReport {
        var report = DatasetReport(format: index.layout.rawValue, path: path, count: index.count, readable: 0, gray: 0, color: 0,
                                   errors: index.problems.count, first_errors: index.problems.prefix(listedErrors).map(\.description), decoded: decode)
        let picks: [Int] = sample.map { n in n >= index.count ? Array(0..<index.count) : (0..<n).map { $0 * index.count / n } } ?? Array(0..<index.count)
        report.probed = picks.count
        var perClass = [Int](repeating: 0, count: index.classNames?.count ?? 0)
        var labelCounts: [Int: Int] = [:]
        for i in 0..<index.count {
            if let label = index.labels?[i] {
                if label >= 0 && label < perClass.count { perClass[label] += 1 } else { labelCounts[label, default: 0] += 1 }
            }
        }
        for i in picks {
            do {
                let bytes = try index.bytes(of: i, within: root)
                let h = try ImageProbe.header(bytes, file: index.names[i])
                if decode { _ = try Readers.decode(bytes, file: index.names[i]) }
                report.readable += 1
                report.min_width = min(report.min_width ?? .max, h.width); report.max_width = max(report.max_width ?? 0, h.width)
                report.min_height = min(report.min_height ?? .max, h.height); report.max_height = max(report.max_height ?? 0, h.height)
                if h.channels == 1 { report.gray += 1 } else { report.color += 1 }
            } catch {
                report.errors += 1
                if report.first_errors.count < listedErrors { report.first_errors.append(error.description) }
            }
        }
        if let names = index.classNames {
            report.classes = zip(names, perClass).map { ClassCount(name: $0, count: $1) }
        } else if !labelCounts.isEmpty {
            report.classes = labelCounts.keys.sorted().map { ClassCount(name: String($0), count: labelCounts[$0]!) }
        }
        return report
    }

    /// The report of a dataset held in memory (IDX, CIFAR, NPY): its images are all readable.
    public static func inMemory(_ ds: ImageDataset, format: String, path: String) -> DatasetReport {
        var classes: [ClassCount]?
        if let labels = ds.labels {
            var counts: [Int: Int] = [:]
            for l in labels { counts[l, default: 0] += 1 }
            classes = counts.keys.sorted().map { ClassCount(name: ds.classNames?[safe: $0] ?? String($0), count: counts[$0]!) }
        }
        return DatasetReport(format: format, path: path, count: ds.count, readable: ds.count, min_width: ds.width, max_width: ds.width,
                             min_height: ds.height, max_height: ds.height, gray: ds.channels == 1 ? ds.count : 0,
                             color: ds.channels == 1 ? 0 : ds.count, classes: classes, errors: 0, first_errors: [], decoded: true)
    }

    /// The report of a dataset that could not be read at all.
    public static func unreadable(format: String, path: String, message: String) -> DatasetReport {
        DatasetReport(format: format, path: path, count: 0, readable: 0, gray: 0, color: 0, errors: 1, first_errors: [message], decoded: false)
    }

    /// The report as lines for a terminal.
    public var text: String {
        let spread = probed.map { $0 < count ? " of \($0) sampled" : "" } ?? ""
        var lines = ["\(path): \(format), \(count) sample(s), \(readable)\(spread) readable" + (decoded ? " (decoded whole)" : " (headers read)")]
        if let a = min_width, let b = max_width, let c = min_height, let d = max_height {
            lines.append("  sizes: width \(a)–\(b), height \(c)–\(d); \(gray) gray, \(color) color")
        }
        if let classes {
            let shown = classes.prefix(20).map { "\($0.name) \($0.count)" }.joined(separator: ", ")
            lines.append("  \(classes.count) class(es): \(shown)" + (classes.count > 20 ? ", ..." : ""))
        } else {
            lines.append("  no labels")
        }
        lines.append("  \(errors) error(s)" + (errors > first_errors.count ? ", the first \(first_errors.count):" : errors > 0 ? ":" : ""))
        lines += first_errors.map { "    \($0)" }
        return lines.joined(separator: "\n")
    }
}

extension Array {
    subscript(safe i: Int) -> Element? { indices.contains(i) ? self[i] : nil }
}

extension Readers {
    /// Decodes a PNG or JPEG held in memory, by its contents (its header checked first, so a
    /// decompression bomb is refused before anything is allocated for it).
    public static func decode(_ bytes: [UInt8], file: String) throws(DataError) -> Image {
        switch try ImageProbe.header(bytes, file: file).format {
        case .png: return try decodePNG(bytes, file: file)
        case .jpeg: return try decodeJPEG(bytes, file: file)
        }
    }
}
