import Daemon
import Data
import Foundation
import HTTP
import MoCo
import NN
import Testing

/// Evaluations and embeddings as API operations: jobs of their own kinds under a training job,
/// through the same queue, states, events and log; their findings checked against the same
/// computation done here in-process on the same checkpoint.
@Suite(.serialized) struct EvaluationTests {
    /// A labeled IDX pair (`prefix`-images-idx3-ubyte and -labels-idx1-ubyte) of 8x8 images in 4 classes,
    /// each class a brightness band, so a representation can tell them apart.
    static func writeIDX(to dir: URL, prefix: String, count: Int, seed: Int) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        func be32(_ v: Int) -> [UInt8] { [UInt8(v >> 24 & 255), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }
        var images = be32(0x0803) + be32(count) + be32(8) + be32(8)
        var labels = be32(0x0801) + be32(count)
        for i in 0..<count {
            let label = (i * 7 + seed) % 4
            labels.append(UInt8(label))
            for p in 0..<64 { images.append(UInt8((label * 60 + (p * 13 + i * 5 + seed) % 50) % 256)) }
        }
        try Data(images).write(to: dir.appendingPathComponent("\(prefix)-images-idx3-ubyte"))
        try Data(labels).write(to: dir.appendingPathComponent("\(prefix)-labels-idx1-ubyte"))
    }

    static let spec = """
    {"name": "eval-parent", "data": {"format": "idx", "path": "tiny", "split": "train"},
     "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8},
     "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},
     "augment": {"preset": "v2", "size": 8}, "optim": {"batch_size": 16, "epochs": 1},
     "checkpoint": {"every_steps": 2, "keep_last": 10}, "threads": 1}
    """

    func trained(_ d: LiveDaemon) throws -> (id: String, checkpoints: [String]) {
        let root = d.dir.appendingPathComponent("datasets/tiny")
        try Self.writeIDX(to: root, prefix: "train", count: 64, seed: 1)
        try Self.writeIDX(to: root, prefix: "t10k", count: 32, seed: 2)
        let id = try #require(d.request("POST", "/v1/jobs", body: Self.spec).json["id"] as? String)
        #expect(d.waitFor(id, ["succeeded", "failed"])["state"] as? String == "succeeded")
        let list = d.request("GET", "/v1/jobs/\(id)/checkpoints").json["checkpoints"] as? [[String: Any]] ?? []
        return (id, list.compactMap { $0["name"] as? String })
    }

    /// The checkpoint's query encoder and normalization, as the worker builds them.
    func encoder(_ d: LiveDaemon, job: String, checkpoint: String) throws -> (ResNet, [Float], [Float], ImageDataset, ImageDataset) {
        let file = try Checkpoint.readQueryEncoder(from: d.dir.appendingPathComponent("jobs/\(job)/checkpoints/\(checkpoint)"))
        let info = try Checkpoint.info(of: file)
        let roots = [d.dir.appendingPathComponent("datasets").path]
        let train = try DataSources.load(.init(format: .idx, path: "tiny", split: "train"), roots: roots, size: 8, channels: 1)
        let test = try DataSources.load(.init(format: .idx, path: "tiny", split: "test"), roots: roots, size: 8, channels: 1)
        let stats = train.channelStatistics()
        return (try Checkpoint.queryEncoder(file, info: info), stats.mean.map { Float($0) }, stats.std.map { Float(max($0, 1e-6)) }, train, test)
    }

    @Test func knnAndLinearEvaluationsRunAsJobs() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let (parent, checkpoints) = try trained(d)
        let latest = try #require(checkpoints.last)
        let test = #"{"format": "idx", "path": "tiny", "split": "test"}"#
        // A second training job holds the daemon's one slot, so the evaluation waits in the queue
        // until its event stream is open (the stream is live: it does not replay earlier points).
        let blocker = try #require(d.request("POST", "/v1/jobs", body: Self.spec).json["id"] as? String)
        #expect(d.waitFor(blocker, ["running", "succeeded", "failed"])["state"] as? String == "running")
        let created = d.request("POST", "/v1/jobs/\(parent)/evaluations", body: #"{"kind": "knn", "data": \#(test), "k": 5}"#)
        #expect(created.status == 202, "\(String(decoding: created.body, as: UTF8.self))")
        let id = try #require(created.json["id"] as? String)
        #expect(created.headers["location"] == "/v1/jobs/\(id)")
        #expect(created.json["kind"] as? String == "evaluation" && created.json["parent_id"] as? String == parent)
        let evaluation = created.json["evaluation"] as? [String: Any]
        #expect(evaluation?["checkpoint"] as? String == latest, "latest is resolved when submitted")
        let events = EventStream(d, id)
        let done = d.waitFor(id, ["succeeded", "failed", "cancelled"])
        #expect(done["state"] as? String == "succeeded", "\(done)")
        let result = try #require(done["result"] as? [String: Any])
        #expect(result["kind"] as? String == "knn" && result["images"] as? Int == 32 && result["train_images"] as? Int == 64 && result["k"] as? Int == 5)
        // The same kNN done here on the same checkpoint.
        let (enc, mean, std, train, evalSet) = try encoder(d, job: parent, checkpoint: latest)
        let expected = Evaluation.knn(enc, train: train, eval: evalSet, mean: mean, std: std, k: 5, t: 0.1)
        // The same up to a vote flipped by the rounding of another thread count: one query image of 32.
        let top1 = try #require(result["top1"] as? Double)
        #expect(abs(top1 - expected) <= 100.0 / 32 + 1e-9, "daemon \(top1) vs in-process \(expected)")
        #expect((done["reason"] as? String ?? "").hasPrefix("kNN top-1"), "\(done)")
        #expect((done["progress"] as? [String: Any])?["step"] as? Int == 96)   // 64 bank + 32 query images encoded
        #expect(events.text.contains("event: metric") && events.text.contains("\"state\":\"succeeded\""))
        #expect(String(decoding: d.request("GET", "/v1/jobs/\(id)/logs").body, as: UTF8.self).contains("kNN top-1"))
        // Linear evaluation on an older checkpoint.
        let linear = d.request("POST", "/v1/jobs/\(parent)/evaluations",
                               body: #"{"kind": "linear", "checkpoint": "\#(checkpoints[0])", "data": \#(test), "epochs": 3}"#)
        let linearID = try #require(linear.json["id"] as? String, "\(String(decoding: linear.body, as: UTF8.self))")
        let linearDone = d.waitFor(linearID, ["succeeded", "failed"])
        let lr = try #require(linearDone["result"] as? [String: Any], "\(linearDone)")
        let (enc0, _, _, _, _) = try encoder(d, job: parent, checkpoint: checkpoints[0])
        let expectedLinear = Evaluation.linear(enc0, train: train, eval: evalSet, mean: mean, std: std, epochs: 3)
        let (t1, t5) = (lr["top1"] as? Double ?? -100, lr["top5"] as? Double ?? -100)
        #expect(abs(t1 - expectedLinear.top1) <= 100.0 / 32 + 1e-9 && abs(t5 - expectedLinear.top5) <= 100.0 / 32 + 1e-9 && lr["epochs"] as? Int == 3,
                "daemon \(t1)/\(t5) vs in-process \(expectedLinear.top1)/\(expectedLinear.top5)")
        // Listed under the training job; an evaluation is not paused, nor evaluated itself.
        let listed = (d.request("GET", "/v1/jobs/\(parent)/evaluations").json["jobs"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
        #expect(Set(listed) == [id, linearID])
        #expect((d.request("GET", "/v1/jobs?kind=evaluation").json["jobs"] as? [Any])?.count == 2)
        #expect(d.request("POST", "/v1/jobs/\(id)/evaluations", body: #"{"kind": "knn", "data": \#(test)}"#).status == 400)
        // Deleting the training job deletes its evaluations.
        #expect(d.request("DELETE", "/v1/jobs/\(parent)").status == 204)
        #expect(d.request("GET", "/v1/jobs/\(id)").status == 404)
        #expect(!FileManager.default.fileExists(atPath: d.dir.appendingPathComponent("jobs/\(id)").path))
    }

    @Test func embeddingsAreAnNPYArtifactWithRanges() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let (parent, checkpoints) = try trained(d)
        let created = d.request("POST", "/v1/jobs/\(parent)/embeddings", body: #"{"data": {"format": "idx", "path": "tiny", "split": "test"}}"#)
        #expect(created.status == 202, "\(String(decoding: created.body, as: UTF8.self))")
        let id = try #require(created.json["id"] as? String)
        #expect(created.json["kind"] as? String == "embedding")
        let done = d.waitFor(id, ["succeeded", "failed"])
        let result = try #require(done["result"] as? [String: Any], "\(done)")
        let dim = 8 * 4   // ResNet-18 at width 4: 8 x width features
        #expect(result["shape"] as? [Int] == [32, dim] && result["artifact"] as? String == "embeddings.npy")
        let link = try #require((done["links"] as? [String: String])?["artifact"])
        let file = d.request("GET", link)
        #expect(file.status == 200 && file.body.count == result["bytes"] as? Int)
        #expect(SHA256.hex(file.body) == result["sha256"] as? String && file.headers["etag"] == "\"\(result["sha256"] as? String ?? "")\"")
        let part = d.request("GET", link, headers: ["Range": "bytes=100-199"])
        #expect(part.status == 206 && part.body == file.body[100..<200])
        // The rows are the features computed here, in dataset order.
        let (enc, mean, std, _, evalSet) = try encoder(d, job: parent, checkpoint: checkpoints.last!)
        let expected = Evaluation.features(enc, evalSet, mean: mean, std: std)
        let bytes = [UInt8](file.body)
        #expect(bytes.starts(with: [0x93] + Array("NUMPY".utf8)))
        let headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
        let header = String(decoding: bytes[10..<(10 + headerLength)], as: UTF8.self)
        #expect(header.contains("'descr': '<f4'") && header.contains("'shape': (32, \(dim))"), "\(header)")
        let values: [Float] = bytes[(10 + headerLength)...].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(values.count == expected.count)
        // Equal up to the rounding of a different thread count (the worker runs on 1 thread).
        let worst = zip(values, expected).map { abs($0 - $1) / max(abs($1), 1e-3) }.max() ?? 1
        #expect(worst < 1e-4, "largest relative difference \(worst)")
        #expect(d.request("GET", "/v1/jobs/\(id)/artifacts/other.npy").status == 404)
        #expect(d.request("GET", "/v1/jobs/\(parent)/artifacts/embeddings.npy").status == 404)
    }

    /// Every problem by its field, as job specs report them; nothing is created.
    @Test func badRequestsAreReportedByField() throws {
        let d = try LiveDaemon()
        defer { d.stop() }
        let (parent, _) = try trained(d)
        func fields(_ path: String, _ body: String) -> [String] {
            let r = d.request("POST", path, body: body)
            #expect(r.status == 422, "\(body): \(r.status) \(String(decoding: r.body, as: UTF8.self))")
            return ((r.json["error"] as? [String: Any])?["details"] as? [[String: Any]] ?? []).compactMap { $0["field"] as? String }
        }
        let e = "/v1/jobs/\(parent)/evaluations"
        #expect(fields(e, #"{"data": {"format": "idx", "path": "tiny"}}"#) == ["kind"])
        #expect(fields(e, #"{"kind": "svm", "data": {"format": "idx", "path": "tiny"}}"#) == ["kind"])
        #expect(fields(e, #"{"kind": "knn", "data": {"format": "idx", "path": "tiny"}, "kk": 3}"#) == ["kk"])
        #expect(fields(e, #"{"kind": "knn", "data": {"format": "idx", "path": "tiny"}, "k": 0, "t": -1}"#) == ["k", "t"])
        #expect(fields(e, #"{"kind": "knn", "data": {"format": "idx", "path": "tiny"}, "checkpoint": "nope.safetensors"}"#) == ["checkpoint"])
        #expect(fields(e, #"{"kind": "knn", "data": {"format": "idx", "path": "../../etc"}}"#) == ["data.path"])
        #expect(fields(e, #"{"kind": "linear", "data": {"format": "jpeg", "path": "tiny"}, "epochs": 1.5}"#) == ["epochs"])
        #expect(fields("/v1/jobs/\(parent)/embeddings", #"{"kind": "knn", "data": {"format": "idx", "path": "tiny"}}"#) == ["kind"])
        #expect(d.request("POST", "/v1/jobs/job_0123456789abcdef/evaluations", body: #"{"kind": "knn"}"#).status == 404)
        #expect((d.request("GET", "/v1/jobs/\(parent)/evaluations").json["jobs"] as? [Any])?.isEmpty == true)
    }

    /// Queued behind a training job, an evaluation waits its turn and can be cancelled; a
    /// training job with an unfinished evaluation cannot be deleted.
    @Test func evaluationsShareTheQueue() throws {
        let d = try LiveDaemon(maxRunning: 1)
        defer { d.stop() }
        let (parent, _) = try trained(d)
        let long = Self.spec.replacingOccurrences(of: "\"epochs\": 1", with: "\"epochs\": 50")
        let blocker = try #require(d.request("POST", "/v1/jobs", body: long).json["id"] as? String)
        _ = d.waitFor(blocker, ["running"])
        let id = try #require(d.request("POST", "/v1/jobs/\(parent)/evaluations",
                                        body: #"{"kind": "knn", "data": {"format": "idx", "path": "tiny", "split": "test"}}"#).json["id"] as? String)
        usleep(300_000)
        #expect(d.request("GET", "/v1/jobs/\(id)").json["state"] as? String == "queued")
        #expect(d.request("POST", "/v1/jobs/\(id)/pause").status == 409)
        #expect(d.request("DELETE", "/v1/jobs/\(parent)").status == 409)
        #expect(d.request("POST", "/v1/jobs/\(id)/cancel").status == 202)
        #expect(d.waitFor(id, ["cancelled"])["reason"] as? String == "cancelled by request")
        #expect(d.request("POST", "/v1/jobs/\(blocker)/cancel").status == 202)
        _ = d.waitFor(blocker, ["cancelled"])
        #expect(d.request("DELETE", "/v1/jobs/\(parent)").status == 204)
    }
}
