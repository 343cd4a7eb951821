import Data
import Foundation
import MoCo
import NN
import TestSupport
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

    /// Labeled gray 8x8 images as IDX files (`<prefix>-images-idx3-ubyte`, `<prefix>-labels-idx1-ubyte`).
    func writeIDX(to dir: URL, prefix: String, count: Int) throws {
        func be(_ v: Int) -> [UInt8] { [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: v >> $0) } }
        var images = be(0x803) + be(count) + be(8) + be(8), labels = be(0x801) + be(count)
        for i in 0..<count {
            labels.append(UInt8(i % 3))
            for p in 0..<64 { images.append(p / 8 / 3 == i % 3 ? 200 : UInt8((p * 37 + i * 11) % 80)) }
        }
        try Data(images).write(to: dir.appendingPathComponent("\(prefix)-images-idx3-ubyte"))
        try Data(labels).write(to: dir.appendingPathComponent("\(prefix)-labels-idx1-ubyte"))
    }

    /// `mpiexec -n 2 moco <arguments>`, ready to run.
    func mpiexecMoco(_ arguments: [String]) throws -> Process { try mpiexec(Self.exe, arguments) }

    /// A temporary folder with `data/imgs.npy` (48 gray 8x8 images).
    func mpiFolder() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-mpi-\(UUID())")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("data"), withIntermediateDirectories: true)
        try writeImages(to: dir.appendingPathComponent("data/imgs.npy"), count: 48)
        return dir
    }

    /// `mpiexec -n 2 moco train` with `distributed.processes` 2 trains the job as one process does
    /// with the whole batch and `bn_splits` 2: the same losses (1e-4 relative) at every step, one
    /// metrics file and one set of checkpoints (rank 0's). Under one process, a spec asking for two
    /// is refused with the reason.
    @Test func distributedTrainingMatchesOneProcess() throws {
        let dir = try mpiFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        func spec(_ processes: Int) throws -> String {
            let text = """
            {"name": "mpi", "data": {"format": "npy", "path": "imgs.npy"},
             "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8},
             "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},
             "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 16, "epochs": 2},
             "checkpoint": {"every_epochs": 1, "keep_last": 5}, "threads": 1, "distributed": {"processes": \(processes)}}
            """
            let url = dir.appendingPathComponent("spec\(processes).json")
            try Data(text.utf8).write(to: url)
            return url.path
        }
        let root = dir.appendingPathComponent("data").path
        let one = try moco(["train", "--config", spec(1), "--out", dir.appendingPathComponent("one").path, "--data-root", root, "--plain"])
        #expect(one.status == 0, "\(one.err)")
        let p = try mpiexecMoco(["train", "--config", try spec(2), "--out", dir.appendingPathComponent("two").path, "--data-root", root, "--plain"])
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "\(text) \(errors)")
        #expect(text.components(separatedBy: "finished").count == 2, "rank 0 alone reports: \(text)")
        func losses(_ run: String) throws -> [Double] {
            try String(contentsOf: dir.appendingPathComponent("\(run)/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
                .compactMap { try JSONDecoder().decode(MetricPoint.self, from: Data($0.utf8)).loss }
        }
        let a = try losses("one"), b = try losses("two")
        #expect(a.count == 6 && b.count == 6, "\(a) \(b)")
        #expect(zip(a, b).allSatisfy { abs($0 - $1) <= 1e-4 * abs($0) }, "one process \(a), two \(b)")
        let checkpoints = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("two/checkpoints").path)
        #expect(checkpoints.filter { $0.hasSuffix(".safetensors") }.sorted() == ["ckpt-e0001-s00000003.safetensors", "ckpt-e0002-s00000006.safetensors"])
        // Two processes asked for, one running: refused with the reason.
        let alone = try moco(["train", "--config", spec(2), "--out", dir.appendingPathComponent("alone").path, "--data-root", root, "--plain"])
        #expect(alone.status != 0 && alone.err.contains("mpiexec -n 2"), "\(alone.err)")

        // Resume from the 2-rank run's epoch-1 checkpoint, with 2 ranks and with 1 process (same
        // global batch): both continue the run (steps 4-6) as it went.
        let epoch1 = dir.appendingPathComponent("two/checkpoints/ckpt-e0001-s00000003.safetensors").path
        let again = try mpiexecMoco(["train", "--config", try spec(2), "--out", dir.appendingPathComponent("two-resumed").path,
                                     "--data-root", root, "--plain", "--resume", epoch1])
        try again.run()
        again.waitUntilExit()
        #expect(again.terminationStatus == 0)
        let single = try moco(["train", "--config", spec(1), "--out", dir.appendingPathComponent("one-resumed").path, "--data-root", root,
                               "--plain", "--resume", epoch1])
        #expect(single.status == 0, "\(single.err)")
        let tail = Array(b[3...])
        let sameN = try losses("two-resumed"), otherN = try losses("one-resumed")
        #expect(sameN.count == 3 && otherN.count == 3, "\(sameN) \(otherN)")
        #expect(zip(sameN, tail).allSatisfy { abs($0 - $1) <= 1e-4 * abs($1) }, "2 ranks resumed \(sameN), straight \(tail)")
        #expect(zip(otherN, tail).allSatisfy { abs($0 - $1) <= 1e-4 * abs($1) }, "1 process resumed \(otherN), straight \(tail)")
    }

    /// A rank that dies brings the job's other ranks down (Open MPI's runtime notices the death):
    /// kill -9 of rank 1 mid-training leaves no rank running within 30 s, and mpiexec fails.
    @Test func killedRankBringsTheOthersDown() throws {
        let dir = try mpiFolder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spec = """
        {"name": "mpi-kill", "data": {"format": "npy", "path": "imgs.npy"},
         "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8},
         "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},
         "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 16, "epochs": 1000},
         "checkpoint": {"every_epochs": 100}, "threads": 1, "distributed": {"processes": 2}}
        """
        try Data(spec.utf8).write(to: dir.appendingPathComponent("spec.json"))
        let p = try mpiexecMoco(["train", "--config", dir.appendingPathComponent("spec.json").path, "--out", dir.appendingPathComponent("run").path,
                                 "--data-root", dir.appendingPathComponent("data").path, "--plain"])
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        // Wait until both ranks train (metrics are being written), then kill rank 1's process.
        let metrics = dir.appendingPathComponent("run/metrics.jsonl")
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, ((try? Data(contentsOf: metrics))?.count ?? 0) < 2000 { usleep(100_000) }
        func ranks() -> [Int32] {
            let text = (try? String(contentsOfFile: "/proc/\(p.processIdentifier)/task/\(p.processIdentifier)/children", encoding: .utf8)) ?? ""
            return text.split(separator: " ").compactMap { Int32($0) }
        }
        let pids = ranks()
        try #require(pids.count == 2, "mpiexec's children: \(pids)")
        let killed = Date()
        kill(pids[1], SIGKILL)
        while Date().timeIntervalSince(killed) < 30, pids.contains(where: { kill($0, 0) == 0 && !isZombie($0) }) { usleep(100_000) }
        let gone = Date().timeIntervalSince(killed)
        #expect(!pids.contains { kill($0, 0) == 0 && !isZombie($0) }, "a rank still runs \(gone) s after rank 1 was killed")
        #expect(gone < 30)
        while p.isRunning && Date().timeIntervalSince(killed) < 30 { usleep(100_000) }
        #expect(!p.isRunning && p.terminationStatus != 0, "mpiexec should fail when a rank dies")
    }

    func isZombie(_ pid: Int32) -> Bool {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        return stat.split(separator: ")").last?.split(separator: " ").first == "Z"
    }

    /// eval, embed and export load the query encoder alone from a checkpoint; one without its
    /// `encoder_q.*` tensors is refused with the reason.
    @Test func evalEmbedExportFromACheckpoint() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.exe.path), "build moco first (swift build)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-eval-\(UUID())")
        let data = dir.appendingPathComponent("data/ds")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try writeIDX(to: data, prefix: "train", count: 32)
        try writeIDX(to: data, prefix: "t10k", count: 12)
        let spec = """
        {"name": "cli-eval", "data": {"format": "idx", "path": "ds"},
         "eval": {"format": "idx", "path": "ds", "split": "test", "knn_k": 5, "knn_t": 0.1},
         "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8},
         "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2},
         "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 16, "epochs": 1}, "threads": 1}
        """
        try Data(spec.utf8).write(to: dir.appendingPathComponent("spec.json"))
        let root = dir.appendingPathComponent("data").path
        let train = try moco(["train", "--config", dir.appendingPathComponent("spec.json").path, "--out", dir.appendingPathComponent("run").path,
                              "--data-root", root, "--plain"])
        try #require(train.status == 0, "\(train.err)")
        let ckpt = dir.appendingPathComponent("run/checkpoints/ckpt-e0001-s00000002.safetensors")

        let knn = try moco(["eval", "knn", "--checkpoint", ckpt.path, "--data-root", root])
        #expect(knn.status == 0 && knn.out.hasPrefix(#"{"protocol": "knn", "k": 5, "t": 0.1, "top1": "#), "\(knn.out) \(knn.err)")
        let linear = try moco(["eval", "linear", "--checkpoint", ckpt.path, "--epochs", "2", "--data-root", root])
        #expect(linear.status == 0 && linear.out.hasPrefix(#"{"protocol": "linear", "epochs": 2, "top1": "#), "\(linear.out) \(linear.err)")
        let npy = dir.appendingPathComponent("f.npy")
        let embed = try moco(["embed", "--checkpoint", ckpt.path, "--data", #"{"format":"idx","path":"ds","split":"test"}"#, "--out", npy.path, "--data-root", root])
        #expect(embed.status == 0 && embed.out.contains("12 x 32 float32"), "\(embed.err)")
        // The exported tensors are the checkpoint's query encoder, read whole or not.
        let enc = dir.appendingPathComponent("enc.safetensors")
        #expect(try moco(["export", "--checkpoint", ckpt.path, "--out", enc.path, "--data-root", root]).status == 0)
        let exported = try SafeTensorsFile.read(from: enc)
        let whole = try SafeTensorsFile.read(from: ckpt)
        #expect(exported.tensors.count == 120 && exported.tensors.allSatisfy { whole["encoder_q." + $0.name] == $0.tensor })

        var headless = whole
        headless.tensors.removeAll { $0.name.hasPrefix("encoder_q.") }
        let bad = dir.appendingPathComponent("headless.safetensors")
        try headless.write(to: bad)
        let refused = try moco(["eval", "knn", "--checkpoint", bad.path, "--data-root", root])
        #expect(refused.status == 1 && refused.err.contains("checkpoint has no encoder_q.* tensors"), "\(refused.err)")
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
