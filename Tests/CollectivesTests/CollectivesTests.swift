import Collectives
import Foundation
import TestSupport
import Testing

/// MPI through Open MPI: the pure batch split, then the collectives across two real ranks
/// (`mpiexec -n 2` of the built `mocobench collectives`, which checks every result on every rank).
@Suite struct CollectivesTests {
    @Test func batchShardsTileTheGlobalBatchInRankOrder() {
        let shards = (0..<4).compactMap { BatchShard(rank: $0, ranks: 4, globalBatch: 64) }
        #expect(shards.map(\.range) == [0..<16, 16..<32, 32..<48, 48..<64])
        #expect(shards.allSatisfy { $0.localBatch == 16 })
        #expect(BatchShard(rank: 0, ranks: 3, globalBatch: 64) == nil, "64 does not split into 3 equal parts")
        #expect(BatchShard(rank: 2, ranks: 2, globalBatch: 64) == nil)
        #expect(BatchShard(rank: 0, ranks: 1, globalBatch: 64)?.range == 0..<64)
    }

    /// A collective has waited too long only while one runs and past the limit.
    @Test func waitLimit() {
        let limit = WaitLimit(seconds: 5)
        #expect(!limit.expired(enteredAt: 0, now: 100_000_000_000), "no collective running")
        #expect(!limit.expired(enteredAt: 1_000_000_000, now: 6_000_000_000), "exactly the limit")
        #expect(limit.expired(enteredAt: 1_000_000_000, now: 6_000_000_001))
        #expect(WaitLimit.now() > 0)
    }

    @Test func launcherIsDetectedFromItsEnvironment() {
        #expect(Communicator.launchedByMPI(["OMPI_COMM_WORLD_SIZE": "2"]))
        #expect(Communicator.launchedByMPI(["PMI_SIZE": "4"]))
        #expect(!Communicator.launchedByMPI(["PATH": "/usr/bin"]))
    }

    /// Two ranks on this machine: all-reduce, all-gather and broadcast give their known results on
    /// both ranks (the executable exits non-zero otherwise), and a gradient-sized all-reduce runs.
    @Test func twoRanksAgreeOnEveryCollective() throws {
        let json = try mpiexec2(["collectives", "--floats", "100000", "--repeats", "3"])
        #expect(json["ranks"] as? Int == 2 && json["ok"] as? Bool == true, "\(json)")
        #expect((json["checks_failed"] as? [String])?.isEmpty == true)
    }

    /// A rank that waits in a collective past its limit gives up (status 70, with a report on
    /// standard error) instead of hanging with the others: rank 1 sleeps before its all-reduce.
    @Test func aHungRankIsGivenUpOn() throws {
        let started = Date()
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let p = try mpiexec(root.appendingPathComponent(".build/debug/mocobench"), ["collectives", "--hang-rank", "1", "--wait-limit", "2"])
        let err = Pipe()
        p.standardError = err
        try p.run()
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let seconds = Date().timeIntervalSince(started)
        #expect(p.terminationStatus != 0)
        #expect(errors.contains("rank 0 on") && errors.contains("waited more than 2.0 s in MPI_Allreduce"), "\(errors)")
        #expect(seconds < 30, "took \(seconds) s")
    }

    /// The equivalence: 2 ranks of 32 images against one process with 64 images and
    /// bn_splits 2, same seed, 10 steps of MoCo v2 (shuffle BN across ranks, gradients
    /// all-reduced, keys all-gathered): losses and final parameters agree to 1e-4 relative, and
    /// both ranks end with bit-identical parameters.
    @Test func dataParallelStepMatchesOneProcess() throws {
        let json = try mpiexec2(["dp-check", "--steps", "10", "--local-batch", "32", "--tolerance", "1e-4"])
        #expect(json["ok"] as? Bool == true, "\(json)")
        #expect(json["parameters_identical_on_every_rank"] as? Bool == true)
        let loss = try #require(json["max_relative_loss_difference"] as? Double)
        let params = try #require(json["max_relative_parameter_difference"] as? Double)
        #expect(loss <= 1e-4 && params <= 1e-4, "losses \(loss), parameters \(params)")
        #expect((json["losses_data_parallel"] as? [Double])?.count == 10)
    }

    /// Runs the built `mocobench` with `arguments` on 2 ranks and returns rank 0's JSON line.
    func mpiexec2(_ arguments: [String]) throws -> [String: Any] {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let p = try mpiexec(root.appendingPathComponent(".build/debug/mocobench"), arguments)
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        #expect(p.terminationStatus == 0, "mpiexec exited \(p.terminationStatus): \(text) \(errors)")
        let line = try #require(text.split(separator: "\n").last { $0.hasPrefix("{") }, "no JSON from rank 0: \(text) \(errors)")
        return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }
}
