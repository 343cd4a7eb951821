import Data
import Foundation
import TestSupport
import Testing

/// Each reader on valid files and on corrupt ones (fixtures from scripts/make_image_fixtures.py).
@Suite struct ReaderTests {
    static let dir = Fixtures.root.appendingPathComponent("images").path

    func expectError(_ what: String, containing: String? = nil, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("\(what): accepted")
        } catch let e as DataError {
            #expect(!e.message.isEmpty && !e.file.isEmpty, "\(what)")
            if let containing { #expect(e.description.contains(containing), "\(what): \(e)") }
        } catch {
            Issue.record("\(what): unexpected error \(error)")
        }
    }

    @Test func idxGzippedAndPlain() throws {
        for suffix in [".gz", ""] {
            let ds = try Readers.idx(images: "\(Self.dir)/idx/t10-images-idx3-ubyte\(suffix)", labels: "\(Self.dir)/idx/t10-labels-idx1-ubyte\(suffix)")
            #expect(ds.count == 10 && ds.height == 4 && ds.width == 4 && ds.channels == 1)
            #expect(ds.labels == Array(0..<10))
            #expect(ds.pixels[3 * 16 + 5] == UInt8(16 * 3 + 5))
        }
    }

    @Test func idxCorrupt() {
        expectError("bad magic", containing: "magic") { _ = try Readers.idx(images: "\(Self.dir)/idx/bad-magic-idx3-ubyte", labels: nil) }
        expectError("truncated", containing: "promises") { _ = try Readers.idx(images: "\(Self.dir)/idx/truncated-images-idx3-ubyte.gz", labels: nil) }
        expectError("corrupt gzip", containing: "corrupt") { _ = try Readers.idx(images: "\(Self.dir)/idx/corrupt.gz", labels: nil) }
        expectError("missing", containing: "no such file") { _ = try Readers.idx(images: "\(Self.dir)/idx/nope", labels: nil) }
        expectError("labels for other count") {
            _ = try Readers.idx(images: "\(Self.dir)/idx/t10-images-idx3-ubyte", labels: "\(Self.dir)/idx/t10-images-idx3-ubyte")
        }
    }

    @Test func cifar() throws {
        let ten = try Readers.cifar(files: ["\(Self.dir)/cifar/data_batch_1.bin"], hundred: false)
        #expect(ten.count == 3 && ten.labels == [3, 7, 9] && ten.channels == 3 && ten.height == 32)
        // pixel (record r, channel c, row y, col x) = (50r + 80c + 7y + 3x) mod 256, stored HWC here.
        let (r, c, y, x) = (2, 1, 5, 7)
        #expect(Int(ten.pixels[r * 3072 + (y * 32 + x) * 3 + c]) == (50 * r + 80 * c + 7 * y + 3 * x) % 256)
        let hundred = try Readers.cifar(files: ["\(Self.dir)/cifar/cifar100.bin"], hundred: true)
        #expect(hundred.labels == [30, 99])
        expectError("truncated", containing: "whole number") { _ = try Readers.cifar(files: ["\(Self.dir)/cifar/truncated.bin"], hundred: false) }
    }

    @Test func npy() throws {
        let gray = try Readers.npy("\(Self.dir)/tiny.npy")
        #expect(gray.count == 5 && gray.height == 4 && gray.width == 3 && gray.channels == 1 && gray.pixels == (0..<60).map { UInt8($0) })
        let rgb = try Readers.npy("\(Self.dir)/tiny_rgb.npy")
        #expect(rgb.count == 2 && rgb.height == 3 && rgb.width == 2 && rgb.channels == 3 && rgb.pixels == (0..<36).map { UInt8($0) })
        expectError("float32", containing: "uint8") { _ = try Readers.npy("\(Self.dir)/bad_dtype.npy") }
        expectError("truncated", containing: "needs") { _ = try Readers.npy("\(Self.dir)/truncated.npy") }
        expectError("fortran", containing: "Fortran") { _ = try Readers.npy("\(Self.dir)/fortran.npy") }
        expectError("not npy", containing: "magic") { _ = try Readers.npy("\(Self.dir)/idx/t10-labels-idx1-ubyte") }
    }

    @Test func npyWriterRoundTrip() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("w-\(UUID()).npy")
        defer { try? FileManager.default.removeItem(at: url) }
        try Readers.writeNPY([1, 2, 3, 4, 5, 6] as [Float], shape: [2, 3], to: url)
        let d = try Data(contentsOf: url)
        #expect(d.count % 64 == 24 % 64 || (d.count - 24) % 64 == 0)   // 64-byte aligned header + 24 data bytes
        let header = String(decoding: d.prefix(d.count - 24), as: UTF8.self)
        #expect(header.contains("'descr': '<f4'") && header.contains("'shape': (2, 3)"))
        let values = d.suffix(24).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(values == [1, 2, 3, 4, 5, 6])
    }

    struct Expected: Decodable {
        struct File: Decodable { let path: String; let width: Int; let height: Int; let jpeg: Bool; let pixels: [Int]; let values16: [Int]? }
        let files: [File]
    }

    @Test func pngAndJPEGMatchPIL() throws {
        let expected = try JSONDecoder().decode(Expected.self, from: Data(contentsOf: URL(fileURLWithPath: "\(Self.dir)/folder_expected.json")))
        for f in expected.files {
            let img = try Readers.decodeImage(at: "\(Self.dir)/folder/\(f.path)")
            #expect(img.width == f.width && img.height == f.height, "\(f.path)")
            // Expand to RGB as PIL's convert("RGB") does.
            let rgb = img.channels == 3 ? img.pixels.map(Int.init) : img.pixels.flatMap { [Int($0), Int($0), Int($0)] }
            if let v16 = f.values16 {
                // 16-bit: we scale to 8 bits (v/257); PIL clamps instead, so compare with the scaled raw values.
                #expect(rgb == v16.flatMap { v in Array(repeating: (v + 128) / 257, count: 3) }, "\(f.path)")
                continue
            }
            let tolerance = f.jpeg ? 2 : 0
            let worst = zip(rgb, f.pixels).map { abs($0 - $1) }.max() ?? 0
            #expect(worst <= tolerance, "\(f.path): max difference \(worst)")
        }
    }

    @Test func corruptImages() {
        expectError("truncated png", containing: "PNG") { _ = try Readers.decodeImage(at: "\(Self.dir)/corrupt/truncated.png") }
        expectError("garbage", containing: "neither") { _ = try Readers.decodeImage(at: "\(Self.dir)/corrupt/garbage.png") }
        expectError("truncated jpg", containing: "JPEG") { _ = try Readers.decodeImage(at: "\(Self.dir)/corrupt/truncated.jpg") }
        expectError("empty", containing: "empty") { _ = try Readers.decodeImage(at: "\(Self.dir)/corrupt/empty.jpg") }
    }

    /// Images are recognised by their contents, not their names: a JPEG named .png decodes.
    @Test func contentsDecideTheFormat() throws {
        let a = try Readers.decodeImage(at: "\(Self.dir)/corrupt/not_png_header.png")
        let b = try Readers.decodeImage(at: "\(Self.dir)/folder/cat/c.jpg")
        #expect(a.pixels == b.pixels)
    }

    @Test func imageFolder() throws {
        let ds = try Readers.imageFolder("\(Self.dir)/folder", size: 6)
        #expect(ds.count == 6 && ds.height == 6 && ds.width == 6 && ds.channels == 3)
        #expect(ds.labels == [0, 0, 0, 1, 1, 1] && ds.classNames == ["cat", "dog"])
        expectError("not a folder", containing: "not a directory") { _ = try Readers.imageFolder("\(Self.dir)/tiny.npy", size: 6) }
        expectError("corrupt member") { _ = try Readers.imageFolder("\(Self.dir)/corrupt", size: 6) }
    }
}

@Suite struct NPYWriterTests {
    /// A uint8 array written by `writeNPY` reads back as the same images.
    @Test func uint8RoundTrip() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("u8-\(UUID()).npy")
        defer { try? FileManager.default.removeItem(at: url) }
        let pixels = (0..<(3 * 4 * 5)).map { UInt8($0 * 3 % 256) }
        try Readers.writeNPY(pixels, shape: [3, 4, 5], to: url)
        let ds = try Readers.npy(url.path)
        #expect(ds.count == 3 && ds.height == 4 && ds.width == 5 && ds.channels == 1 && ds.pixels == pixels)
    }
}
