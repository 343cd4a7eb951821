import CPNG
import CTurboJPEG
import CZlib
import Foundation

/// Readers for the supported on-disk formats. Each validates sizes against what the header
/// promises, so a truncated or corrupt file is a `DataError` naming the file, never a crash.
public enum Readers {
    // MARK: - Whole files, through zlib (plain files pass through unchanged)

    /// Opens `path` for reading. With a `root` (a data root, symlinks resolved) the open
    /// descriptor itself is checked: it must be a regular file or a directory whose real path (as
    /// the kernel reports it for the descriptor, after any symlink swapped in since the path was
    /// resolved) lies inside `root`. Never blocks on a FIFO or device.
    public static func openFile(_ path: String, within root: String?, directory: Bool = false) throws(DataError) -> Int32 {
        guard !path.utf8.contains(0) else { throw DataError(file: path.debugDescription, "paths must not contain NUL") }
        let flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | (directory ? O_DIRECTORY : 0)
        let fd = open(path, flags)
        guard fd >= 0 else {
            let e = errno
            throw DataError(file: path, e == ENOENT ? "no such file" : e == ENOTDIR ? "not a directory" : "cannot open: \(String(cString: strerror(e)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { close(fd); throw DataError(file: path, "cannot stat: \(String(cString: strerror(errno)))") }
        let kind = st.st_mode & S_IFMT
        guard kind == (directory ? S_IFDIR : S_IFREG) else {
            close(fd)
            throw DataError(file: path, directory ? "not a directory" : "not a regular file")
        }
        if let root {
            guard let real = descriptorPath(fd), real == root || real.hasPrefix(root + "/") else {
                close(fd)
                throw DataError(file: path, "resolves outside its data root")
            }
        }
        // Reads block as usual from here on (O_NONBLOCK only kept the open from waiting).
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return fd
    }

    /// The path the kernel has for an open descriptor (`/proc/self/fd/N`), nil if unknown.
    static func descriptorPath(_ fd: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The whole contents of `path` (see `openFile` for `root`).
    public static func readFile(_ path: String, within root: String?) throws(DataError) -> [UInt8] {
        let fd = try openFile(path, within: root)
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw DataError(file: path, "cannot read: \(String(cString: strerror(errno)))")
            }
            if n == 0 { return out }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    /// The bytes of `path`, gunzipped when it is gzip data. Capped at `limit` bytes. With a
    /// `root`, the file must lie inside it when opened (see `openFile`).
    public static func readMaybeGzip(_ path: String, limit: Int = 4 << 30, within root: String? = nil) throws(DataError) -> [UInt8] {
        let fd = try openFile(path, within: root)
        guard let f = gzdopen(fd, "rb") else { close(fd); throw DataError(file: path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { gzclose(f) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { gzread(f, $0.baseAddress, UInt32($0.count)) }
            if n < 0 {
                var errnum: Int32 = 0
                let msg = gzerror(f, &errnum).map { String(cString: $0) } ?? "read error"
                throw DataError(file: path, "corrupt compressed data: \(msg)")
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<Int(n)])
            if out.count > limit { throw DataError(file: path, "larger than \(limit) bytes") }
        }
        // gzread stops quietly at a truncated gzip stream; gzerror reports it.
        var errnum: Int32 = 0
        _ = gzerror(f, &errnum)
        if errnum != Z_OK && errnum != Z_STREAM_END {
            throw DataError(file: path, "corrupt compressed data (zlib error \(errnum))")
        }
        return out
    }

    // MARK: - IDX (MNIST, Fashion-MNIST)

    static func bigEndian32(_ b: [UInt8], _ at: Int) -> Int {
        Int(b[at]) << 24 | Int(b[at + 1]) << 16 | Int(b[at + 2]) << 8 | Int(b[at + 3])
    }

    /// An IDX3 image file (`0x00000803`, N x H x W uint8) and, optionally, its IDX1 labels.
    public static func idx(images: String, labels: String?, within root: String? = nil) throws(DataError) -> ImageDataset {
        let b = try readMaybeGzip(images, within: root)
        guard b.count >= 16 else { throw DataError(file: images, "too short for an IDX3 header (\(b.count) bytes)") }
        let magic = bigEndian32(b, 0)
        guard magic == 0x0803 else {
            throw DataError(file: images, String(format: "bad magic 0x%08x: expected 0x00000803 (IDX3 uint8 images)", magic))
        }
        let (n, h, w) = (bigEndian32(b, 4), bigEndian32(b, 8), bigEndian32(b, 12))
        guard h > 0, w > 0, h <= 4096, w <= 4096 else { throw DataError(file: images, "implausible image size \(h)x\(w)") }
        let need = 16 + n * h * w
        guard b.count >= need else { throw DataError(file: images, "header promises \(n) images of \(h)x\(w) (\(need) bytes) but the file has \(b.count)") }
        var ds = ImageDataset(count: n, height: h, width: w, channels: 1, pixels: Array(b[16..<need]))
        if let labels {
            let l = try readMaybeGzip(labels, within: root)
            guard l.count >= 8 else { throw DataError(file: labels, "too short for an IDX1 header") }
            guard bigEndian32(l, 0) == 0x0801 else { throw DataError(file: labels, String(format: "bad magic 0x%08x: expected 0x00000801 (IDX1 labels)", bigEndian32(l, 0))) }
            let ln = bigEndian32(l, 4)
            guard ln == n else { throw DataError(file: labels, "\(ln) labels for \(n) images") }
            guard l.count >= 8 + n else { throw DataError(file: labels, "header promises \(n) labels but the file has \(l.count - 8)") }
            ds.labels = l[8..<(8 + n)].map(Int.init)
        }
        return ds
    }

    // MARK: - CIFAR binary batches

    /// CIFAR-10 (`<label><3072 pixels>`) or CIFAR-100 (`<coarse><fine><3072 pixels>`, fine label
    /// used) records from one or more files; pixels are R, G, B planes of 32x32.
    public static func cifar(files: [String], hundred: Bool, within root: String? = nil) throws(DataError) -> ImageDataset {
        let labelBytes = hundred ? 2 : 1, record = labelBytes + 3072
        var pixels: [UInt8] = [], labels: [Int] = []
        for file in files {
            let b = try readMaybeGzip(file, within: root)
            guard !b.isEmpty, b.count % record == 0 else {
                throw DataError(file: file, "\(b.count) bytes is not a whole number of \(record)-byte CIFAR-\(hundred ? 100 : 10) records")
            }
            for r in 0..<(b.count / record) {
                let base = r * record
                labels.append(Int(b[base + labelBytes - 1]))
                for p in 0..<1024 { for c in 0..<3 { pixels.append(b[base + labelBytes + c * 1024 + p]) } }
            }
        }
        return ImageDataset(count: labels.count, height: 32, width: 32, channels: 3, pixels: pixels, labels: labels)
    }

    // MARK: - NPY

    /// A NumPy `.npy` uint8 array of shape (N, H, W) or (N, H, W, C) with C 1 or 3, C order.
    public static func npy(_ path: String, within root: String? = nil) throws(DataError) -> ImageDataset {
        let b = try readMaybeGzip(path, within: root)
        guard b.count >= 10, b[0] == 0x93, Array(b[1..<6]) == Array("NUMPY".utf8) else { throw DataError(file: path, "not an NPY file (bad magic)") }
        let major = b[6]
        let (lenBytes, start) = major == 1 ? (2, 8) : (4, 8)
        guard major >= 1 && major <= 3, b.count >= start + lenBytes else { throw DataError(file: path, "unsupported NPY version \(major)") }
        var headerLen = 0
        for i in 0..<lenBytes { headerLen |= Int(b[start + i]) << (8 * i) }
        let dataStart = start + lenBytes + headerLen
        guard b.count >= dataStart else { throw DataError(file: path, "truncated NPY header") }
        let header = String(decoding: b[(start + lenBytes)..<dataStart], as: UTF8.self)
        func field(_ name: String) -> String? {
            guard let r = header.range(of: "'\(name)':") else { return nil }
            return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
        guard let descr = field("descr"), descr.hasPrefix("'|u1'") || descr.hasPrefix("'u1'") || descr.hasPrefix("'<u1'") else {
            throw DataError(file: path, "dtype must be uint8 ('|u1'); header: \(header.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        guard let fortran = field("fortran_order"), fortran.hasPrefix("False") else {
            throw DataError(file: path, "Fortran-ordered arrays are not supported; save with C order")
        }
        guard let shapeField = field("shape"), let open = shapeField.firstIndex(of: "("), let close = shapeField.firstIndex(of: ")") else {
            throw DataError(file: path, "no shape in header")
        }
        let dims = shapeField[shapeField.index(after: open)..<close].split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.compactMap { Int($0) }
        guard dims.count == 3 || (dims.count == 4 && (dims[3] == 1 || dims[3] == 3)), dims.allSatisfy({ $0 > 0 }) else {
            throw DataError(file: path, "shape must be (N, H, W) or (N, H, W, C) with C 1 or 3, got \(dims)")
        }
        let total = dims.reduce(1, *)
        guard b.count - dataStart >= total else { throw DataError(file: path, "shape \(dims) needs \(total) bytes, the file has \(b.count - dataStart)") }
        return ImageDataset(count: dims[0], height: dims[1], width: dims[2], channels: dims.count == 4 ? dims[3] : 1,
                            pixels: Array(b[dataStart..<(dataStart + total)]))
    }

    /// Writes a float32 C-order NPY file of `shape` (what `moco embed` produces).
    public static func writeNPY(_ values: [Float], shape: [Int], to url: URL) throws {
        try encodeNPY(values, shape: shape).write(to: url, options: .atomic)
    }

    /// Writes a uint8 C-order NPY file of `shape` (an image dataset `npy` reads).
    public static func writeNPY(_ values: [UInt8], shape: [Int], to url: URL) throws {
        try writeNPY(descr: "|u1", shape: shape, data: Data(values), to: url)
    }

    static func writeNPY(descr: String, shape: [Int], data: Data, to url: URL) throws {
        try encodeNPY(descr: descr, shape: shape, data: data).write(to: url, options: .atomic)
    }

    /// A float32 C-order NPY file's bytes.
    public static func encodeNPY(_ values: [Float], shape: [Int]) -> Data {
        encodeNPY(descr: "<f4", shape: shape, data: values.withUnsafeBytes { Data($0) })
    }

    static func encodeNPY(descr: String, shape: [Int], data: Data) -> Data {
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeText), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var d = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
        let n = UInt16(header.utf8.count)
        d.append(contentsOf: [UInt8(n & 0xff), UInt8(n >> 8)])
        d.append(contentsOf: Array(header.utf8))
        d.append(data)
        return d
    }

    // MARK: - Image folders (PNG, JPEG)

    /// One decoded image, row-major HWC with 1 (gray) or 3 (RGB) channels.
    public struct Image: Sendable {
        public var width: Int, height: Int, channels: Int, pixels: [UInt8]
    }

    public static func decodePNG(_ bytes: [UInt8], file: String) throws(DataError) -> Image {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        let ok = bytes.withUnsafeBytes { png_image_begin_read_from_memory(&image, $0.baseAddress, $0.count) }
        guard ok != 0 else { throw DataError(file: file, "not a readable PNG: \(pngMessage(&image))") }
        defer { png_image_free(&image) }
        let gray = image.format & UInt32(PNG_FORMAT_FLAG_COLOR) == 0
        // 16-bit files: read the 16-bit values and keep the high byte (v / 257), as a scaling
        // decoder does; libpng's 8-bit conversion would gamma-encode them as linear light.
        let sixteen = image.format & UInt32(PNG_FORMAT_FLAG_LINEAR) != 0
        // Alpha is read and then dropped (as PIL's convert("RGB")), not composited onto black.
        let alpha = !sixteen && image.format & UInt32(PNG_FORMAT_FLAG_ALPHA) != 0
        image.format = (gray ? UInt32(PNG_FORMAT_GRAY) : UInt32(PNG_FORMAT_RGB)) | (sixteen ? UInt32(PNG_FORMAT_FLAG_LINEAR) : 0)
            | (alpha ? UInt32(PNG_FORMAT_FLAG_ALPHA) : 0)
        let (w, h) = (Int(image.width), Int(image.height))
        guard w > 0, h > 0, w * h <= 1 << 26 else { throw DataError(file: file, "implausible PNG size \(w)x\(h)") }
        var out = [UInt8](repeating: 0, count: Int(mocod_png_image_size(&image)))
        let done = out.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, 0, nil) }
        guard done != 0 else { throw DataError(file: file, "corrupt PNG: \(pngMessage(&image))") }
        if sixteen {
            out = out.withUnsafeBytes { raw in raw.bindMemory(to: UInt16.self).map { UInt8((UInt32($0) + 128) / 257) } }
        }
        if alpha {
            let c = gray ? 1 : 3
            out = (0..<(w * h)).flatMap { p in out[(p * (c + 1))..<(p * (c + 1) + c)] }
        }
        return Image(width: w, height: h, channels: gray ? 1 : 3, pixels: out)
    }

    static func pngMessage(_ image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// Decodes a JPEG; `scale` (one of turbojpeg's factors) lets the DCT do the downscaling.
    public static func decodeJPEG(_ bytes: [UInt8], file: String, scaledTo scale: (num: Int, denom: Int) = (1, 1)) throws(DataError) -> Image {
        guard let handle = tjInitDecompress() else { throw DataError(file: file, "cannot start the JPEG decoder") }
        defer { tjDestroy(handle) }
        var w: Int32 = 0, h: Int32 = 0, subsamp: Int32 = 0, colorspace: Int32 = 0
        var src = bytes
        let headerOK = src.withUnsafeMutableBufferPointer {
            tjDecompressHeader3(handle, $0.baseAddress, UInt($0.count), &w, &h, &subsamp, &colorspace)
        }
        guard headerOK == 0 else { throw DataError(file: file, "not a readable JPEG: \(String(cString: tjGetErrorStr2(handle)))") }
        guard w > 0, h > 0, Int(w) * Int(h) <= 1 << 26 else { throw DataError(file: file, "implausible JPEG size \(w)x\(h)") }
        let gray = colorspace == TJCS_GRAY.rawValue
        let channels = gray ? 1 : 3
        w = Int32((Int(w) * scale.num + scale.denom - 1) / scale.denom)
        h = Int32((Int(h) * scale.num + scale.denom - 1) / scale.denom)
        var out = [UInt8](repeating: 0, count: Int(w) * Int(h) * channels)
        let rc = src.withUnsafeMutableBufferPointer { s in
            out.withUnsafeMutableBufferPointer { o in
                tjDecompress2(handle, s.baseAddress, UInt(s.count), o.baseAddress, w, 0, h,
                              gray ? Int32(TJPF_GRAY.rawValue) : Int32(TJPF_RGB.rawValue), 0)
            }
        }
        // Warnings (e.g. a few missing bytes at the end) still decode; errors do not.
        if rc != 0 && tjGetErrorCode(handle) == Int32(TJERR_FATAL.rawValue) {
            throw DataError(file: file, "corrupt JPEG: \(String(cString: tjGetErrorStr2(handle)))")
        }
        if rc != 0 { throw DataError(file: file, "corrupt or truncated JPEG: \(String(cString: tjGetErrorStr2(handle)))") }
        return Image(width: Int(w), height: Int(h), channels: channels, pixels: out)
    }

    /// Decodes a PNG or JPEG by its contents (not its name).
    public static func decodeImage(at path: String, within root: String? = nil) throws(DataError) -> Image {
        let bytes = try readFile(path, within: root)
        if bytes.count >= 8, bytes[0] == 0x89, bytes[1] == 0x50, bytes[2] == 0x4E, bytes[3] == 0x47 { return try decodePNG(bytes, file: path) }
        if bytes.count >= 3, bytes[0] == 0xFF, bytes[1] == 0xD8, bytes[2] == 0xFF { return try decodeJPEG(bytes, file: path) }
        throw DataError(file: path, bytes.isEmpty ? "empty file" : "neither a PNG nor a JPEG (unrecognised signature)")
    }

    static let imageExtensions: Set<String> = ["png", "jpg", "jpeg"]

    /// An image folder: `root/<class>/<image>` (labels by sorted class name) or, without
    /// subfolders, `root/<image>` (unlabeled). Every image is resized (shorter side to `size`,
    /// bilinear) and center-cropped to `size x size`; the dataset is gray when every image is gray.
    public static func imageFolder(_ root: String, size: Int, within dataRoot: String? = nil) throws(DataError) -> ImageDataset {
        let fm = FileManager.default
        close(try openFile(root, within: dataRoot, directory: true))   // a directory inside the data root
        let entries = ((try? fm.contentsOfDirectory(atPath: root)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        let classes = entries.filter { var d: ObjCBool = false; return fm.fileExists(atPath: root + "/" + $0, isDirectory: &d) && d.boolValue }
        var files: [(String, Int?)] = []
        if classes.isEmpty {
            files = entries.filter { imageExtensions.contains(($0 as NSString).pathExtension.lowercased()) }.map { (root + "/" + $0, nil) }
        } else {
            for (label, c) in classes.enumerated() {
                let dir = root + "/" + c
                let names = ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).sorted()
                    .filter { imageExtensions.contains(($0 as NSString).pathExtension.lowercased()) }
                files += names.map { (dir + "/" + $0, label) }
            }
        }
        guard !files.isEmpty else { throw DataError(file: root, "no .png or .jpg images found") }
        var images: [Image] = []
        for (f, _) in files { images.append(try decodeImage(at: f, within: dataRoot)) }
        let channels = images.allSatisfy { $0.channels == 1 } ? 1 : 3
        var pixels: [UInt8] = []
        pixels.reserveCapacity(files.count * size * size * channels)
        for img in images { pixels += Resize.squareCrop(img, size: size, channels: channels) }
        return ImageDataset(count: files.count, height: size, width: size, channels: channels, pixels: pixels,
                            labels: classes.isEmpty ? nil : files.map { $0.1! }, classNames: classes.isEmpty ? nil : classes)
    }
}

/// Resizing of decoded images to the fixed size a dataset stores.
enum Resize {
    /// Shorter side to `size` (bilinear), then a centered `size x size` crop, converted to `channels`.
    static func squareCrop(_ img: Readers.Image, size: Int, channels: Int) -> [UInt8] {
        let scale = Double(size) / Double(min(img.width, img.height))
        let (sw, sh) = (max(size, Int((Double(img.width) * scale).rounded())), max(size, Int((Double(img.height) * scale).rounded())))
        let (ox, oy) = ((sw - size) / 2, (sh - size) / 2)
        var out = [UInt8](repeating: 0, count: size * size * channels)
        // Source values as Double, converted to `channels` (RGB to luma with ITU-R 601-2 weights).
        func px(_ y: Int, _ x: Int, _ c: Int) -> Double {
            let base = (y * img.width + x) * img.channels
            if img.channels == 1 { return Double(img.pixels[base]) }
            if channels == 1 {
                return 0.299 * Double(img.pixels[base]) + 0.587 * Double(img.pixels[base + 1]) + 0.114 * Double(img.pixels[base + 2])
            }
            return Double(img.pixels[base + c])
        }
        Bilinear.resample(rows: Bilinear.Axis(outputs: size, length: img.height, resized: sh, offset: oy, rounding: .divideFirst),
                          columns: Bilinear.Axis(outputs: size, length: img.width, resized: sw, offset: ox, rounding: .divideFirst),
                          channels: channels, sample: px, store: { y, x, c, v in out[(y * size + x) * channels + c] = UInt8(max(0, min(255, v.rounded()))) })
        return out
    }
}
