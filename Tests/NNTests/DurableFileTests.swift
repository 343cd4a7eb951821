import Foundation
import NN
import Testing

@Suite struct DurableFileTests {
    func folder() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("durable-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func replacesContentsAndLeavesNoTemporaryFile() throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("a.bin")
        let big = Data((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })   // several write(2) calls' worth
        try DurableFile.write(big, to: url)
        #expect(try Data(contentsOf: url) == big)
        try DurableFile.write(Data("short".utf8), to: url)
        #expect(try Data(contentsOf: url) == Data("short".utf8))
        try DurableFile.write(Data(), to: url)
        #expect(try Data(contentsOf: url).isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["a.bin"])
    }

    /// A missing folder fails at the first step, naming the temporary file and the reason.
    @Test func missingFolderIsReported() throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("no/such/x.bin")
        #expect {
            try DurableFile.write(Data("x".utf8), to: url)
        } throws: { error in
            guard let e = error as? DurableFileError else { return false }
            return e.step == .create && e.errno == ENOENT && e.path.hasSuffix("/no/such/.x.bin.tmp-\(getpid())")
                && e.description.contains("cannot create: No such file or directory")
        }
    }

    /// A rename that fails (the target is a non-empty folder) leaves the target as it was and
    /// removes the temporary file.
    @Test func failedRenameCleansUp() throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let target = dir.appendingPathComponent("taken")
        try FileManager.default.createDirectory(at: target.appendingPathComponent("inside"), withIntermediateDirectories: true)
        #expect {
            try DurableFile.write(Data("x".utf8), to: target)
        } throws: { error in
            guard let e = error as? DurableFileError else { return false }
            return e.step == .rename && e.path == target.path
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["taken"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: target.path) == ["inside"])
    }

    /// The safetensors writer reports the same failures as its own I/O errors.
    @Test func safeTensorsWriteReportsTheStep() throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = SafeTensorsFile(tensors: [("a", SafeTensor(floats: [1], shape: [1]))])
        #expect {
            try file.write(to: dir.appendingPathComponent("gone/x.safetensors"))
        } throws: { error in
            guard let e = error as? SafeTensorsError else { return false }
            return e.code == .io && e.message == "cannot create: No such file or directory" && e.file?.contains(".x.safetensors.tmp-") == true
        }
    }
}
