import Foundation
import Autograd

/// A problem with a safetensors file: what is wrong and, where known, which file and tensor.
public struct SafeTensorsError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Code: String, Sendable { case io, truncated, badHeader, badEntry, missingKey, unexpectedKey, shapeMismatch, dtype }
    public let code: Code
    public let message: String
    public var file: String?

    public init(_ code: Code, _ message: String, file: String? = nil) {
        self.code = code; self.message = message; self.file = file
    }

    public var description: String { (file.map { "\($0): " } ?? "") + message }
}

/// One tensor of a safetensors file: dtype, shape and little-endian bytes.
public struct SafeTensor: Sendable, Equatable {
    public enum DType: String, Sendable, CaseIterable {
        case f32 = "F32", f64 = "F64", i64 = "I64", i32 = "I32", u8 = "U8", f16 = "F16", bf16 = "BF16", bool = "BOOL"
        public var size: Int {
            switch self {
            case .f64, .i64: 8
            case .f32, .i32: 4
            case .f16, .bf16: 2
            case .u8, .bool: 1
            }
        }
    }

    public var dtype: DType
    public var shape: [Int]
    public var data: Data

    public init(dtype: DType, shape: [Int], data: Data) {
        self.dtype = dtype; self.shape = shape; self.data = data
    }

    /// An fp32 tensor's values in row-major order.
    public init(_ t: Tensor) {
        let values = t.toArray()
        self.init(dtype: .f32, shape: t.shape, data: values.withUnsafeBytes { Data($0) })
    }

    public init(floats: [Float], shape: [Int]) {
        self.init(dtype: .f32, shape: shape, data: floats.withUnsafeBytes { Data($0) })
    }

    public init(int64s: [Int64], shape: [Int]) {
        self.init(dtype: .i64, shape: shape, data: int64s.withUnsafeBytes { Data($0) })
    }

    public var count: Int { shape.reduce(1, *) }

    /// The values as fp32 (F32 as is; F64, I64, I32, U8 converted).
    public func floats() throws(SafeTensorsError) -> [Float] {
        switch dtype {
        case .f32: return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        case .f64: return data.withUnsafeBytes { $0.bindMemory(to: Double.self).map { Float($0) } }
        case .i64: return data.withUnsafeBytes { $0.bindMemory(to: Int64.self).map { Float($0) } }
        case .i32: return data.withUnsafeBytes { $0.bindMemory(to: Int32.self).map { Float($0) } }
        case .u8: return data.map { Float($0) }
        default: throw SafeTensorsError(.dtype, "cannot read \(dtype.rawValue) as fp32")
        }
    }

    public func int64s() throws(SafeTensorsError) -> [Int64] {
        switch dtype {
        case .i64: return data.withUnsafeBytes { Array($0.bindMemory(to: Int64.self)) }
        case .i32: return data.withUnsafeBytes { $0.bindMemory(to: Int32.self).map { Int64($0) } }
        default: throw SafeTensorsError(.dtype, "cannot read \(dtype.rawValue) as int64")
        }
    }

    /// A new row-major `Tensor` with these values.
    public func tensor(requiresGrad: Bool = false) throws(SafeTensorsError) -> Tensor {
        Tensor(shape: shape, data: try floats(), requiresGrad: requiresGrad)
    }
}

/// The safetensors format: an 8-byte little-endian header length, a JSON header mapping names
/// to `{dtype, shape, data_offsets}` plus an optional `__metadata__` string map, then raw
/// little-endian data. https://github.com/huggingface/safetensors
public struct SafeTensorsFile: Sendable, Equatable {
    /// Tensors in file order (by data offset).
    public var tensors: [(name: String, tensor: SafeTensor)]
    public var metadata: [String: String]

    public init(tensors: [(name: String, tensor: SafeTensor)], metadata: [String: String] = [:]) {
        self.tensors = tensors; self.metadata = metadata
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.metadata == b.metadata && a.tensors.map(\.name) == b.tensors.map(\.name) && a.tensors.map(\.tensor) == b.tensors.map(\.tensor)
    }

    public subscript(name: String) -> SafeTensor? { tensors.first { $0.name == name }?.tensor }

    /// A dictionary view by name.
    public var byName: [String: SafeTensor] { Dictionary(tensors.map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a }) }

    /// Header limit: larger headers are rejected as corrupt rather than allocated.
    public static let maxHeaderBytes = 100 << 20

    // MARK: Encoding

    public func encoded() -> Data {
        var header: [String: Any] = [:]
        var offset = 0
        for (name, t) in tensors {
            header[name] = ["dtype": t.dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + t.data.count]] as [String: Any]
            offset += t.data.count
        }
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var json = try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
        while (8 + json.count) % 8 != 0 { json.append(0x20) }
        var out = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        for (_, t) in tensors { out.append(t.data) }
        return out
    }

    /// Writes to `url` durably (`DurableFile.write`: a temporary file in the same folder,
    /// fsynced and renamed into place, then the folder fsynced).
    public func write(to url: URL) throws(SafeTensorsError) {
        do { try DurableFile.write(encoded(), to: url) } catch {
            throw SafeTensorsError(.io, "cannot \(error.step.rawValue): \(error.reason)", file: error.path)
        }
    }

    // MARK: Decoding

    public static func read(from url: URL) throws(SafeTensorsError) -> SafeTensorsFile {
        let data: Data
        do { data = try Data(contentsOf: url, options: .mappedIfSafe) } catch {
            throw SafeTensorsError(.io, "cannot read: \(error.localizedDescription)", file: url.path)
        }
        do { return try decode(data) } catch { var e = error; e.file = url.path; throw e }
    }

    /// Parses and validates a whole file image. Every structural problem is an error, never a trap.
    public static func decode(_ data: Data) throws(SafeTensorsError) -> SafeTensorsFile {
        guard data.count >= 8 else { throw SafeTensorsError(.truncated, "file is \(data.count) bytes, shorter than the 8-byte header length") }
        let headerLength = try headerLength(data.prefix(8))
        guard data.count - 8 >= headerLength else {
            throw SafeTensorsError(.truncated, "header says \(headerLength) bytes but only \(data.count - 8) follow")
        }
        let start = data.startIndex
        let header = try parseHeader(data[(start + 8)..<(start + 8 + headerLength)])
        let body = data[(start + 8 + headerLength)...]
        var tensors: [(name: String, tensor: SafeTensor)] = []
        for e in header.entries.sorted(by: { $0.offsets.lowerBound < $1.offsets.lowerBound }) {
            guard e.offsets.upperBound <= body.count else {
                throw SafeTensorsError(.truncated, "tensor \(e.name): data ends at byte \(e.offsets.upperBound) but the data section has \(body.count)")
            }
            let slice = body[(body.startIndex + e.offsets.lowerBound)..<(body.startIndex + e.offsets.upperBound)]
            tensors.append((e.name, SafeTensor(dtype: e.dtype, shape: e.shape, data: Data(slice))))
        }
        return SafeTensorsFile(tensors: tensors, metadata: header.metadata)
    }

    // MARK: The header, shared by `decode` and `readHeader`

    /// One tensor's header entry, validated: its byte range in the data section matches its
    /// dtype and shape (whether the data section is that long is the caller's check).
    struct HeaderEntry {
        var name: String
        var dtype: SafeTensor.DType
        var shape: [Int]
        var offsets: Range<Int>
    }

    /// The little-endian header length in a file's first 8 bytes, refused above `maxHeaderBytes`.
    static func headerLength(_ prefix: Data) throws(SafeTensorsError) -> Int {
        var n: UInt64 = 0
        for (i, byte) in prefix.prefix(8).enumerated() { n |= UInt64(byte) << UInt64(8 * i) }
        guard n <= UInt64(maxHeaderBytes) else { throw SafeTensorsError(.badHeader, "header length \(n) exceeds the \(maxHeaderBytes)-byte limit") }
        return Int(n)
    }

    /// Parses and validates the JSON header: `__metadata__` a map of strings, every other key a
    /// tensor entry with a known dtype, a shape of non-negative integers and `data_offsets`
    /// spanning exactly its bytes.
    static func parseHeader(_ json: Data) throws(SafeTensorsError) -> (metadata: [String: String], entries: [HeaderEntry]) {
        guard let object = try? JSONSerialization.jsonObject(with: json), let header = object as? [String: Any] else {
            throw SafeTensorsError(.badHeader, "header is not a JSON object")
        }
        var metadata: [String: String] = [:]
        var entries: [HeaderEntry] = []
        for (name, value) in header {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw SafeTensorsError(.badHeader, "__metadata__ is not an object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw SafeTensorsError(.badHeader, "__metadata__[\(k)] is not a string") }
                    metadata[k] = s
                }
                continue
            }
            guard let e = value as? [String: Any] else { throw SafeTensorsError(.badEntry, "tensor \(name): entry is not an object") }
            guard let ds = e["dtype"] as? String, let dtype = SafeTensor.DType(rawValue: ds) else {
                throw SafeTensorsError(.badEntry, "tensor \(name): unknown dtype \(e["dtype"] ?? "none")")
            }
            guard let shapeAny = e["shape"] as? [Any], let shape = intArray(shapeAny), shape.allSatisfy({ $0 >= 0 && $0 < 1 << 40 }) else {
                throw SafeTensorsError(.badEntry, "tensor \(name): shape must be a list of non-negative integers")
            }
            guard let offAny = e["data_offsets"] as? [Any], let off = intArray(offAny), off.count == 2,
                  off[0] >= 0, off[1] >= off[0] else {
                throw SafeTensorsError(.badEntry, "tensor \(name): data_offsets must be [begin, end] with 0 <= begin <= end")
            }
            let (count, overflow) = shape.reduce((1, false)) { acc, d in
                let (m, o) = acc.0.multipliedReportingOverflow(by: d); return (m, acc.1 || o)
            }
            guard !overflow, count.multipliedReportingOverflow(by: dtype.size).overflow == false,
                  off[1] - off[0] == count * dtype.size else {
                throw SafeTensorsError(.badEntry, "tensor \(name): \(off[1] - off[0]) bytes for shape \(shape) of \(dtype.rawValue)")
            }
            entries.append(HeaderEntry(name: name, dtype: dtype, shape: shape, offsets: off[0]..<off[1]))
        }
        return (metadata, entries)
    }

    private static func intArray(_ a: [Any]) -> [Int]? {
        var out: [Int] = []
        for v in a {
            // Integral numbers only: booleans (objCType "c") and fractions are rejected.
            guard let num = v as? NSNumber, String(cString: num.objCType) != "c", let i = v as? Int else { return nil }
            out.append(i)
        }
        return out
    }
}

extension SafeTensorsFile {
    /// The header of a safetensors file (names, dtypes, shapes and `__metadata__`), without
    /// reading the tensor data.
    public struct Header: Sendable {
        public var metadata: [String: String]
        public var entries: [(name: String, dtype: SafeTensor.DType, shape: [Int])]
    }

    /// Reads only the first `8 + header length` bytes, and validates the header as `decode` does.
    public static func readHeader(from url: URL) throws(SafeTensorsError) -> Header {
        let (handle, header) = try openWithHeader(url)
        try? handle.close()
        return Header(metadata: header.metadata,
                      entries: header.entries.map { ($0.name, $0.dtype, $0.shape) }.sorted { $0.name < $1.name })
    }

    /// The tensors whose names pass `include`, with the file's metadata, reading from disk only
    /// the header and those tensors' bytes (a checkpoint's query encoder without the key encoder,
    /// queue and momentum buffers). The header is validated as `decode` does, and every entry,
    /// read or not, must lie inside the file.
    public static func read(from url: URL, including include: (String) -> Bool) throws(SafeTensorsError) -> SafeTensorsFile {
        let (handle, header) = try openWithHeader(url)
        defer { try? handle.close() }
        do throws(SafeTensorsError) {
            guard let size = try? handle.seekToEnd() else { throw SafeTensorsError(.io, "cannot find the file's size") }
            let bodyCount = Int(size) - header.dataStart
            var tensors: [(name: String, tensor: SafeTensor)] = []
            for e in header.entries.sorted(by: { $0.offsets.lowerBound < $1.offsets.lowerBound }) {
                guard e.offsets.upperBound <= bodyCount else {
                    throw SafeTensorsError(.truncated, "tensor \(e.name): data ends at byte \(e.offsets.upperBound) but the data section has \(bodyCount)")
                }
                guard include(e.name) else { continue }
                let bytes: Data
                if e.offsets.isEmpty { bytes = Data() } else {
                    guard (try? handle.seek(toOffset: UInt64(header.dataStart + e.offsets.lowerBound))) != nil,
                          let b = try? handle.read(upToCount: e.offsets.count), b.count == e.offsets.count else {
                        throw SafeTensorsError(.io, "tensor \(e.name): cannot read its \(e.offsets.count) bytes")
                    }
                    bytes = b
                }
                tensors.append((e.name, SafeTensor(dtype: e.dtype, shape: e.shape, data: bytes)))
            }
            return SafeTensorsFile(tensors: tensors, metadata: header.metadata)
        } catch {
            var e = error; e.file = url.path; throw e
        }
    }

    /// Opens `url` and parses its header, reading `8 + N` bytes; errors name the file.
    private static func openWithHeader(_ url: URL) throws(SafeTensorsError)
        -> (FileHandle, (dataStart: Int, metadata: [String: String], entries: [HeaderEntry])) {
        guard let handle = try? FileHandle(forReadingFrom: url) else {
            throw SafeTensorsError(.io, "cannot open", file: url.path)
        }
        do throws(SafeTensorsError) {
            let prefix = (try? handle.read(upToCount: 8)) ?? Data()
            guard prefix.count == 8 else { throw SafeTensorsError(.truncated, "file is \(prefix.count) bytes, shorter than the 8-byte header length") }
            let length = try headerLength(prefix)
            let json = length == 0 ? Data() : (try? handle.read(upToCount: length)) ?? Data()
            guard json.count == length else { throw SafeTensorsError(.truncated, "header says \(length) bytes but only \(json.count) follow") }
            let header = try parseHeader(json)
            return (handle, (8 + length, header.metadata, header.entries))
        } catch {
            try? handle.close()
            var e = error; e.file = url.path; throw e
        }
    }
}
