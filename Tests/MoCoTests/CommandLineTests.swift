import Data
import Foundation
import Testing

/// The `moco` executable end to end on a tiny NPY dataset: train, export, embed, eval.
@Suite(.serialized) struct CommandLineTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let exe = root.appendingPathComponent(".build/debug/moco")

    @discardableResult
    func moco(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = Self.exe
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    /// Gray 8x8 images in (N, H, W) uint8 NPY form.
    func writeImages(to url: URL, count: Int) throws {
        let pixels: [UInt8] = (0..<(count * 64)).map { (i: Int) -> UInt8 in UInt8((i * 37 + (i / 64) * 11) % 256) }
        try Readers.writeNPY(pixels, shape: [count, 8, 8], to: url)
    }

    @Test func trainExportEmbed() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.exe.path), "build moco first (swift build)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID())")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("data"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try writeImages(to: dir.appendingPathComponent("data/imgs.npy"), count: 48)
        let spec = """
        {"name": "cli", "data": {"format": "npy", "path": "imgs.npy"},
         "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8},
         "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2},
         "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 16, "epochs": 1}, "threads": 1}
        """
        try Data(spec.utf8).write(to: dir.appendingPathComponent("spec.json"))
        let root = dir.appendingPathComponent("data").path
        let train = try moco(["train", "--config", dir.appendingPathComponent("spec.json").path, "--out", dir.appendingPathComponent("run").path,
                              "--data-root", root, "--plain"])
        #expect(train.status == 0, "\(train.err)")
        #expect(train.out.contains("finished"))
        let ckpt = dir.appendingPathComponent("run/checkpoints/ckpt-e0001-s00000003.safetensors").path
        #expect(FileManager.default.fileExists(atPath: ckpt))

        let enc = dir.appendingPathComponent("enc.safetensors").path
        #expect(try moco(["export", "--checkpoint", ckpt, "--out", enc, "--data-root", root]).status == 0)

        let npy = dir.appendingPathComponent("f.npy").path
        let embed = try moco(["embed", "--checkpoint", ckpt, "--data", #"{"format":"npy","path":"imgs.npy","limit":10}"#, "--out", npy, "--data-root", root])
        #expect(embed.status == 0, "\(embed.err)")
        let d = try Data(contentsOf: URL(fileURLWithPath: npy))
        let header = String(decoding: d.prefix(128), as: UTF8.self)
        #expect(header.contains("'shape': (10, 32)"), "\(header)")   // width 4 -> 32 features
        #expect(d.count == 128 + 10 * 32 * 4)

        // Errors are messages with a non-zero status, not crashes.
        let bad = try moco(["train", "--config", "/nonexistent.json", "--out", dir.path])
        #expect(bad.status == 1 && bad.err.contains("cannot read"))
        try Data(#"{"data": {"path": "x"}, "optim": {"bacth_size": 3}}"#.utf8).write(to: dir.appendingPathComponent("bad.json"))
        let invalid = try moco(["train", "--config", dir.appendingPathComponent("bad.json").path, "--out", dir.path])
        #expect(invalid.status == 1 && invalid.err.contains("optim.bacth_size: unknown field"))
    }
}
