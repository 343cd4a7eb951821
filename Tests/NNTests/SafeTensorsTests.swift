import Foundation
import Autograd
import NN
import Testing

@Suite struct SafeTensorsTests {
    func sample() -> SafeTensorsFile {
        SafeTensorsFile(tensors: [("a", SafeTensor(floats: [1, 2, 3, 4, 5, 6], shape: [2, 3])),
                                  ("n", SafeTensor(int64s: [7], shape: [])),
                                  ("b", SafeTensor(floats: [0.5], shape: [1]))],
                        metadata: ["arch": "resnet18", "note": "ünïcode ok"])
    }

    @Test func roundTrip() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("st-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("x.safetensors")
        try sample().write(to: url)
        let back = try SafeTensorsFile.read(from: url)
        #expect(back == sample())
        // No temporary files left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["x.safetensors"])
    }

    /// `readHeader` gives the names, dtypes, shapes and metadata that `read` does.
    @Test func headerMatchesTheFile() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("h-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        try sample().write(to: url)
        let header = try SafeTensorsFile.readHeader(from: url)
        #expect(header.metadata == sample().metadata)
        #expect(header.entries.map(\.name) == ["a", "b", "n"])   // by name
        #expect(header.entries.map(\.dtype) == [.f32, .f32, .i64] && header.entries.map(\.shape) == [[2, 3], [1], []])
    }

    /// A partial read gives the chosen tensors as a full read does, and still checks that every
    /// entry lies inside the file.
    @Test func partialRead() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("p-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        try sample().write(to: url)
        let some = try SafeTensorsFile.read(from: url) { $0 != "a" }
        #expect(some.tensors.map(\.name) == ["n", "b"] && some.metadata == sample().metadata)
        #expect(some["n"] == sample()["n"] && some["b"] == sample()["b"])
        #expect(try SafeTensorsFile.read(from: url) { _ in true } == SafeTensorsFile.read(from: url))
        let whole = try Data(contentsOf: url)
        try whole.prefix(whole.count - 2).write(to: url)
        #expect { try SafeTensorsFile.read(from: url) { $0 == "n" } } throws: {
            ($0 as? SafeTensorsError)?.code == .truncated && ($0 as? SafeTensorsError)?.file == url.path
        }
    }

    @Test func moduleStateRoundTrip() throws {
        var rng = SeededGenerator(seed: 9)
        let a = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 4, inChannels: 1, numClasses: 3), using: &rng)
        let b = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 4, inChannels: 1, numClasses: 3), using: &rng)
        (a.bn1).numBatchesTracked = 42
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("m-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        try a.save(to: url, metadata: ["arch": "resnet18"])
        try b.load(from: url)
        #expect(a.stateDict().map(\.tensor) == b.stateDict().map(\.tensor))
        #expect(b.bn1.numBatchesTracked == 42)
        // A model of another shape is refused with the key named.
        let c = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 8, inChannels: 1, numClasses: 3), using: &rng)
        #expect { try c.load(from: url) } throws: { ($0 as? SafeTensorsError)?.code == .shapeMismatch }
        let d = ResNet(ResNetConfig(arch: .resnet34, stem: .cifar, width: 4, inChannels: 1, numClasses: 3), using: &rng)
        #expect { try d.load(from: url) } throws: { ($0 as? SafeTensorsError)?.code == .missingKey }
    }

    /// Every corruption is an error with a message, never a crash.
    @Test func corruptFilesAreRejected() {
        let good = sample().encoded()
        var cases: [(String, Data)] = [
            ("empty", Data()),
            ("short length", good.prefix(5)),
            ("header cut", good.prefix(20)),
            ("data cut", good.prefix(good.count - 3)),
            ("huge header length", Data([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]) + good.dropFirst(8)),
        ]
        func withHeader(_ json: String, body: Int = 24) -> Data {
            var d = Data()
            let h = Data(json.utf8)
            withUnsafeBytes(of: UInt64(h.count).littleEndian) { d.append(contentsOf: $0) }
            return d + h + Data(count: body)
        }
        cases += [
            ("not json", withHeader("{nope")),
            ("not an object", withHeader("[1,2]")),
            ("unknown dtype", withHeader(#"{"a":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}"#)),
            ("negative shape", withHeader(#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#)),
            ("fractional shape", withHeader(#"{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#)),
            ("boolean shape", withHeader(#"{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}"#)),
            ("size mismatch", withHeader(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#)),
            ("reversed offsets", withHeader(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#)),
            ("past the end", withHeader(#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#)),
            ("overflowing shape", withHeader(#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#)),
            ("bad metadata", withHeader(#"{"__metadata__":{"k":1}}"#)),
            ("entry not object", withHeader(#"{"a":3}"#)),
        ]
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("st-corrupt-\(UUID())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for (name, data) in cases {
            do {
                _ = try SafeTensorsFile.decode(data)
                Issue.record("\(name): accepted")
            } catch {
                #expect(!error.message.isEmpty, "\(name)")
            }
            // The header-only reader shares the parser: the same files are refused unless the
            // fault is past the header, in tensor data it does not read.
            let url = dir.appendingPathComponent("\(name).safetensors")
            try? data.write(to: url)
            let pastTheHeader = ["data cut", "past the end"].contains(name)
            do {
                _ = try SafeTensorsFile.readHeader(from: url)
                #expect(pastTheHeader, "\(name): header accepted")
            } catch {
                #expect(!pastTheHeader && error.file == url.path && !error.message.isEmpty, "\(name): \(error)")
            }
        }
        #expect(throws: SafeTensorsError.self) { try SafeTensorsFile.read(from: URL(fileURLWithPath: "/nonexistent/x.safetensors")) }
    }
}
