import Foundation
import Jobs
import Logging
import MoCo
import NN
import Worker

/// Records one running job's worker events: metric points and progress into the store (in
/// batches, and always before a checkpoint exists), checkpoints into the table, lines into the
/// job's log, and each event to live subscribers. A write the store refuses is reported to
/// `fault` (the job then stops and fails: its record would be incomplete).
final class JobRecorder {
    let id: String
    let store: JobStore
    let directory: URL
    let log: Logger
    private let events: LiveEvents
    private let fault: (Error, String) -> Void
    private let countStep: () -> Void
    private var pending: [MetricPoint] = []
    private var lastFlush = Date()
    /// An evaluation's or embedding's finding in words (its end's reason), once it is in.
    private(set) var resultSummary: String?

    init(id: String, store: JobStore, directory: URL, log: Logger, events: LiveEvents,
         fault: @escaping (Error, String) -> Void, countStep: @escaping () -> Void) {
        self.id = id; self.store = store; self.directory = directory; self.log = log; self.events = events
        self.fault = fault; self.countStep = countStep
    }

    func record(_ event: WorkerEvent) {
        switch event.kind {
        case .started:
            let total = event.totalSteps ?? 0
            do { try store.updateProgress(id) { $0.totalSteps = total } } catch { fault(error, "record progress") }
            for w in event.warnings ?? [] { log.warning("preflight", metadata: ["warning": "\(w)"]) }
        case .step, .evaluation:
            guard let p = event.point else { return }
            pending.append(p)
            if p.kind == .step { countStep() }
            if Date().timeIntervalSince(lastFlush) > 1 || p.kind == .eval { flush() }
            events.publish(id, JobStreamEvent(p.kind == .eval ? .eval : .metric, p))
        case .checkpointing:
            // Everything up to a checkpoint is made durable before it exists: after a crash,
            // training resumes there, and no metric point before it may be missing.
            flush()
        case .checkpointed:
            guard let c = event.checkpoint else { return }
            let record = CheckpointRecord(jobId: id, name: c.name, epoch: c.info.epoch, step: c.info.step, bytes: c.bytes, sha256: c.sha256,
                                          createdAt: c.info.created, knnTop1: c.info.knnTop1)
            do {
                try store.recordCheckpoint(record)
                // Retention may have removed older files: keep the table in step with the folder.
                let folder = directory.appendingPathComponent("checkpoints")
                let present = Set((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? [])
                for old in try store.checkpoints(id) where !present.contains(old.name) { try store.removeCheckpoint(job: id, name: old.name) }
            } catch {
                fault(error, "record checkpoint \(c.name)")
            }
            events.publish(id, JobStreamEvent(.checkpoint, JobStreamEvent.CheckpointData(name: c.name, sha256: c.sha256)))
            log.info("checkpoint", metadata: ["checkpoint": "\(c.name)"])
        case .message:
            let m = event.message ?? ""
            log.info("\(m)")
            appendLog(m)
        case .finished:
            // An evaluation's or embedding's finding lands in its record before its end does.
            guard let r = event.result else { return }
            resultSummary = r.summary
            do { try store.updateProgress(id) { $0.result = DaemonJSON.string(r) } } catch { fault(error, "record the result") }
        case .stopped, .failed:
            break
        }
    }

    /// Stores buffered metric points and moves the job's progress to the newest of them.
    func flush() {
        lastFlush = Date()
        guard !pending.isEmpty else { return }
        let points = pending
        pending.removeAll()
        do {
            try store.appendMetrics(points.map { MetricRecord(jobId: id, step: $0.step, kind: $0.kind.rawValue, json: DaemonJSON.string($0)) })
            try store.updateProgress(id) { j in
                for p in points {
                    j.step = max(j.step, p.step)
                    j.epoch = max(j.epoch, p.epoch)
                    if let l = p.loss { j.lastLoss = l }
                    if let v = p.images_per_second { j.imagesPerSecond = v }
                    if let e = p.eta_seconds { j.etaSeconds = e }
                    if let k = p.knn_top1 { j.bestKnn = max(j.bestKnn ?? -1, k) }
                }
            }
        } catch {
            fault(error, "store metrics")
        }
    }

    /// After a crash the newest checkpoint may be on disk but not yet in the table: records it.
    func syncCheckpointsOnDisk(_ spec: JobSpec) {
        let known = Set(((try? store.checkpoints(id)) ?? []).map(\.name))
        for e in checkpointStore(spec).list() where !known.contains(e.url.lastPathComponent) {
            guard let sha = Checkpoint.recordedDigest(of: e.url) else { continue }
            let bytes = ((try? FileManager.default.attributesOfItem(atPath: e.url.path))?[.size] as? NSNumber)?.int64Value ?? 0
            try? store.recordCheckpoint(CheckpointRecord(jobId: id, name: e.url.lastPathComponent, epoch: e.epoch, step: e.step,
                                                         bytes: bytes, sha256: sha, createdAt: Date(), knnTop1: e.knnTop1))
        }
    }

    /// A worker outlives its daemon by up to a step (it stops and checkpoints when the daemon
    /// dies): the points it wrote to `metrics.jsonl` meanwhile, up to the checkpoint it will
    /// resume from, are stored now, so every step appears once.
    func syncMetricsOnDisk(_ spec: JobSpec) {
        guard let resumeStep = checkpointStore(spec).latestValid()?.step,
              let text = try? String(contentsOf: directory.appendingPathComponent("metrics.jsonl"), encoding: .utf8) else { return }
        let stored = ((try? store.lastMetricStep(id)) ?? nil) ?? 0
        guard stored < resumeStep else { return }
        pending += text.split(separator: "\n").compactMap { try? JSONDecoder().decode(MetricPoint.self, from: Data($0.utf8)) }
            .filter { $0.step > stored && $0.step <= resumeStep }
        flush()
    }

    private func checkpointStore(_ spec: JobSpec) -> CheckpointStore {
        CheckpointStore(directory: directory.appendingPathComponent("checkpoints"),
                        keepLast: spec.checkpoint.keep_last, keepBest: spec.checkpoint.keep_best)
    }

    /// A line in the job's human-readable log (`jobs/<id>/job.log`), and a live `log` event.
    func appendLog(_ line: String) { events.appendLog(id, line, directory: directory) }
}

/// A job's human-readable log (`jobs/<id>/job.log`): its state changes with their reasons, and
/// its worker's messages.
enum JobLog {
    /// One `write` with `O_APPEND`: lines from several threads (a request, the job's thread) never
    /// interleave. Returns the line as written, with its time and without its newline.
    @discardableResult
    static func append(_ line: String, to directory: URL) -> String {
        try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let stamped = ISO8601DateFormatter().string(from: Date()) + " " + line
        let text = Array((stamped + "\n").utf8)
        let fd = open(directory.appendingPathComponent("job.log").path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return stamped }
        _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        return stamped
    }
}

extension JobLog {
    /// The last `count` lines of a log's text (all of it when it has fewer).
    static func tail(_ text: String, lines count: Int) -> Substring {
        guard count > 0 else { return "" }
        var end = text.endIndex
        if text.hasSuffix("\n") { end = text.index(before: end) }
        var i = end, seen = 0
        while i > text.startIndex {
            let prev = text.index(before: i)
            if text[prev] == "\n" { seen += 1; if seen == count { return text[i...] } }
            i = prev
        }
        return text[...]
    }
}
