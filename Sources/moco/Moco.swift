import ArgumentParser
import Autograd
import Collectives
import Data
import Foundation
import Kernels
import MoCo
import NN

@main
enum Entry {
    static func main() {
        // OpenBLAS picks its kernel when it loads: re-exec with the right one before anything else.
        Runtime.ensureFastOpenBLAS()
        Moco.main()
    }
}

struct Moco: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moco",
        abstract: "Self-supervised training (MoCo v1/v2, SimCLR, MoCo v3) on the CPU, in the foreground.",
        subcommands: [Train.self, Eval.self, Export.self, Embed.self, EstimateCommand.self, DataCommand.self])
}

// MARK: - estimate

struct EstimateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "estimate", abstract: "A job spec's expected peak memory, term by term, in bytes (as the daemon's dry run reports it).")
    @Option(help: "The job spec (JSON file).") var config: String

    func run() throws {
        let spec: JobSpec
        do { spec = try JobSpec.parse(readJSONArgument(config)) } catch { fail("\(error)") }
        struct Output: Encodable { var total: Int; var terms: MemoryEstimate }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let e = spec.memoryEstimate
        print(String(decoding: try encoder.encode(Output(total: e.total, terms: e)), as: UTF8.self))
    }
}

// MARK: - data

struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "data", abstract: "Look at datasets.", subcommands: [Inspect.self])

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a dataset's format, sample count, image-size range, classes and the images that cannot be used.",
            discussion: """
            DATA is the spec's data object, inline JSON or a file, e.g. '{"format": "folder", "path": "photos"}' or \
            '{"format": "tar", "path": "shards/train-{000000..000099}.tar"}' (tar: WebDataset-style shards, a folder of .tar \
            files or a brace pattern). Image folders and shards are indexed and each image's header read; --decode decodes \
            every image whole, which also finds truncated files. Exits 1 when the dataset cannot be read at all.
            """)
        @Argument(help: "The data object (JSON or a file).") var data: String
        @Flag(help: "Decode every image whole (slower; finds truncated files).") var decode = false
        @Flag(help: "Print the report as JSON.") var json = false
        @OptionGroup var roots: DataOptions

        struct Request: Decodable { var format: String; var path: String; var split: String? }

        func run() throws {
            let request: Request
            do { request = try JSONDecoder().decode(Request.self, from: readJSONArgument(data)) } catch { fail("bad data object: \(error)") }
            let report: DatasetReport
            do {
                report = try DataSources.inspect(format: request.format, path: request.path, split: request.split, roots: roots.roots, decode: decode)
            } catch { fail("\(error)") }
            if json {
                let e = JSONEncoder()
                e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                print(String(decoding: (try? e.encode(report)) ?? Data(), as: UTF8.self))
            } else {
                print(report.text)
            }
        }
    }
}

/// Options shared by the commands that read datasets.
struct DataOptions: ParsableArguments {
    @Option(name: .customLong("data-root"), help: "Folder that dataset paths are relative to (repeatable; default /usr/share/datasets and ./datasets).")
    var dataRoots: [String] = []

    var roots: [String] { dataRoots.isEmpty ? DataSources.defaultRoots : dataRoots }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("moco: \(message)\n".utf8))
    Foundation.exit(1)
}

func readJSONArgument(_ text: String) -> Data {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    if trimmed.hasPrefix("{") { return Data(trimmed.utf8) }
    guard let d = FileManager.default.contents(atPath: trimmed) else { fail("cannot read \(trimmed)") }
    return d
}

/// A checkpoint's query-encoder tensors and its info (the key encoder, queue and optimizer state are not read).
func loadCheckpoint(_ path: String) -> (SafeTensorsFile, CheckpointInfo) {
    do {
        let file = try Checkpoint.readQueryEncoder(from: URL(fileURLWithPath: path))
        return (file, try Checkpoint.info(of: file))
    } catch { fail("\(error)") }
}

/// The query encoder of a checkpoint alone, in eval mode, with the normalization it was trained with.
func encoder(from file: SafeTensorsFile, info: CheckpointInfo, train: ImageDataset?) -> (ResNet, [Float], [Float]) {
    let encoder: ResNet
    do { encoder = try Checkpoint.queryEncoder(file, info: info) } catch { fail("\(error)") }
    let (mean, std) = normalization(info.spec, train: train)
    return (encoder, mean, std)
}

func normalization(_ spec: JobSpec, train: ImageDataset?) -> ([Float], [Float]) {
    if let m = spec.augment.mean, let s = spec.augment.std { return (m, s) }
    guard let train else { fail("the checkpoint's spec computes mean/std from its training split; give --data-root so it can be read") }
    let stats = train.channelStatistics()
    return (spec.augment.mean ?? stats.mean.map { Float($0) }, spec.augment.std ?? stats.std.map { Float(max($0, 1e-6)) })
}

/// A dataset (image folders and tar shards streamed with `channels` channels; their index cached at `indexCache`).
func load(_ source: JobSpec.DataSource, _ roots: [String], size: Int, channels: Int, indexCache: URL? = nil) -> ImageDataset {
    do { return try DataSources.load(source, roots: roots, size: size, channels: channels, indexCache: indexCache) } catch { fail("\(error)") }
}

// MARK: - train

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Train a job in the foreground, writing metrics and checkpoints to --out.")
    @Option(help: "The job spec (JSON file).") var config: String
    @Option(help: "Output folder: metrics.jsonl and checkpoints/.") var out: String
    @OptionGroup var data: DataOptions
    @Option(help: "Continue from a checkpoint (a path, or 'latest' for the newest valid one in --out).") var resume: String?
    @Option(help: "Data worker threads (augmentation runs ahead of the compute thread).") var workers = 1
    @Option(help: "Override optim.epochs.") var epochs: Int?
    @Flag(help: "Plain log lines even on a terminal.") var plain = false
    @Flag(help: "Skip the raw-pixel kNN baseline computed before training when the spec has an evaluation split.") var noBaseline = false
    @Option(help: "Override the spec's precision: fp32, or bf16 mixed precision.") var precision: Precision?

    func run() throws {
        var spec: JobSpec
        do { spec = try JobSpec.parse(readJSONArgument(config)) } catch { fail("\(error)") }
        if let epochs { spec.optim.epochs = epochs }
        if let precision { spec.precision = precision }
        let machine = spec.machineIssues(bf16: Runtime.bf16)
        if !machine.isEmpty { fail("\(SpecError(machine))") }
        let outURL0 = URL(fileURLWithPath: out)
        let train = load(spec.data, data.roots, size: spec.augment.size, channels: spec.model.in_channels,
                         indexCache: outURL0.appendingPathComponent("data-index.json"))
        let eval = spec.eval.map { load($0.source, data.roots, size: spec.augment.size, channels: spec.model.in_channels,
                                        indexCache: outURL0.appendingPathComponent("eval-index.json")) }
        // Under mpiexec (the spec's distributed.processes above 1) the ranks train together;
        // rank 0 writes and reports, the others stay quiet.
        var world: Communicator?
        if spec.distributed.processes > 1 || Communicator.launchedByMPI() {
            do { world = try Communicator.world() } catch { fail("\(error)") }
        }
        defer { if world != nil { Communicator.finalize() } }
        let writer = (world?.rank ?? 0) == 0
        let outURL = URL(fileURLWithPath: out)
        if writer { try FileManager.default.createDirectory(at: outURL, withIntermediateDirectories: true) }
        let progress = Progress(terminal: !plain && isatty(1) == 1, quiet: !writer)
        let trainer = Trainer(spec: spec, train: train, eval: eval, outDirectory: outURL, workers: workers, group: world) { progress.handle($0) }
        var resumeURL: URL?
        if let resume {
            if resume == "latest" {
                guard let e = trainer.store.latestValid() else { fail("no valid checkpoint in \(trainer.store.directory.path)") }
                resumeURL = e.url
            } else {
                resumeURL = URL(fileURLWithPath: resume)
            }
        }
        progress.log("training \(spec.name): \(train.count) images \(train.height)x\(train.width)x\(train.channels), "
                     + "\(spec.model.arch.rawValue) width \(spec.model.width), mean \(trainer.mean) std \(trainer.std)")
        if writer, let eval, let e = spec.eval, !noBaseline {
            let t0 = Date()
            let raw = Evaluation.rawPixelKNN(train: train, eval: eval, mean: trainer.mean, std: trainer.std, k: e.knn_k, t: e.knn_t)
            progress.log(String(format: "raw-pixel kNN top-1 (baseline): %.2f%% (%.1f s; --no-baseline skips it)", raw, Date().timeIntervalSince(t0)))
        }
        let outcome: TrainingOutcome
        do { outcome = try trainer.run(resume: resumeURL) } catch { fail("\(error)") }
        progress.finish()
        switch outcome {
        case .finished: progress.log("finished")
        case .stopped(let step): progress.log("stopped at step \(step)")
        case .failed(let reason): fail(reason)
        }
    }
}

/// A progress bar on a terminal, plain log lines otherwise.
final class Progress: @unchecked Sendable {
    /// Used only from the training thread that calls `handle`.
    let terminal: Bool
    var total = 0
    var lastLine = Date.distantPast
    var barShown = false

    /// Prints nothing (the ranks of a distributed run other than 0).
    let quiet: Bool

    init(terminal: Bool, quiet: Bool = false) { self.terminal = terminal; self.quiet = quiet }

    func log(_ s: String) {
        guard !quiet else { return }
        if barShown { print(""); barShown = false }
        print(s)
        fflush(nil)
    }

    func handle(_ e: TrainingEvent) {
        guard !quiet else { return }
        switch e {
        case .started(let t, let start, let warnings):
            total = t
            for w in warnings { log("warning: \(w)") }
            log("\(t) steps in all\(start > 0 ? ", starting at \(start)" : "")")
        case .step(let p):
            let line = String(format: "epoch %d step %d/%d loss %.4f lr %.4g %.0f img/s data-wait %.0f%% ETA %@",
                              p.epoch, p.step, p.total_steps, p.loss ?? .nan, p.lr ?? .nan, p.images_per_second ?? 0,
                              100 * (p.data_wait_share ?? 0), duration(p.eta_seconds ?? 0))
            if terminal {
                let width = 24, done = Int(Double(width) * Double(p.step) / Double(max(p.total_steps, 1)))
                print("\r[" + String(repeating: "#", count: done) + String(repeating: ".", count: width - done) + "] " + line, terminator: "")
                barShown = true
                fflush(nil)
            } else if Date().timeIntervalSince(lastLine) >= 10 || p.step == p.total_steps {
                lastLine = Date()
                log(line)
            }
        case .evaluated, .checkpointing: break
        case .checkpointed(let url, let sha, _, _):
            log("checkpoint \(url.lastPathComponent) sha256 \(sha.prefix(16))…")
        case .message(let m): log(m)
        }
    }

    func finish() { if barShown { print(""); barShown = false } }

    func duration(_ s: Double) -> String {
        let t = Int(s.isFinite ? s : 0)
        return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60) : String(format: "%dm%02ds", t / 60, t % 60)
    }
}

// MARK: - eval

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Evaluate a checkpoint's encoder: weighted kNN or linear evaluation.")
    @Argument(help: "knn or linear") var protocolName: String
    @Option(help: "Checkpoint file.") var checkpoint: String
    @Option(help: "Training split (feature bank / classifier training) as the spec's data object, inline JSON or a file; default: the checkpoint's.") var data: String?
    @Option(help: "Evaluation split, same form; default: the checkpoint's eval split.") var eval: String?
    @OptionGroup var roots: DataOptions
    @Option(help: "kNN neighbours (default: the spec's).") var k: Int?
    @Option(help: "kNN temperature (default: the spec's).") var t: Float?
    @Option(help: "Linear evaluation epochs.") var epochs = 30
    @Option(help: "fp32, or bf16: the backbone runs under bf16 mixed precision.") var precision: Precision = .fp32

    func run() throws {
        guard ["knn", "linear"].contains(protocolName) else { fail("protocol must be knn or linear") }
        let (file, info) = loadCheckpoint(checkpoint)
        let size = info.spec.augment.size
        func source(_ text: String?, _ fallback: JobSpec.DataSource?) -> JobSpec.DataSource {
            if let text {
                do { return try JSONDecoder().decode(DataArgument.self, from: readJSONArgument(text)).source } catch { fail("bad data object: \(error)") }
            }
            guard let fallback else { fail("the checkpoint's spec has no eval split; give --eval") }
            return fallback
        }
        let train = load(source(data, info.spec.data), roots.roots, size: size, channels: info.spec.model.in_channels)
        let test = load(source(eval, info.spec.eval?.source), roots.roots, size: size, channels: info.spec.model.in_channels)
        guard train.labels != nil, test.labels != nil else { fail("evaluation needs labeled splits") }
        let (enc, mean, std) = encoder(from: file, info: info, train: train)
        if protocolName == "knn" {
            let kk = k ?? info.spec.eval?.knn_k ?? 200, tt = t ?? info.spec.eval?.knn_t ?? 0.1
            let t0 = Date()
            let top1 = Evaluation.knn(enc, train: train, eval: test, mean: mean, std: std, k: kk, t: tt, precision: precision)
            print(String(format: #"{"protocol": "knn", "k": %d, "t": %g, "top1": %.4f, "precision": "%@", "seconds": %.3f}"#,
                         kk, tt, top1, precision.rawValue, Date().timeIntervalSince(t0)))
        } else {
            let t0 = Date()
            let r = Evaluation.linear(enc, train: train, eval: test, mean: mean, std: std, epochs: epochs, precision: precision)
            print(String(format: #"{"protocol": "linear", "epochs": %d, "top1": %.4f, "top5": %.4f, "precision": "%@", "seconds": %.3f}"#,
                         epochs, r.top1, r.top5, precision.rawValue, Date().timeIntervalSince(t0)))
        }
    }
}

/// The spec's `data` object on the command line (`format`, `path`, `split`, `limit`).
struct DataArgument: Decodable {
    var format: JobSpec.DataFormat
    var path: String
    var split: String?
    var limit: Int?
    var source: JobSpec.DataSource { .init(format: format, path: path, split: split ?? "train", limit: limit) }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let name = try c.decode(String.self, forKey: .format)
        guard let format = JobSpec.DataFormat(rawValue: name) else {
            throw ValidationError("unknown data format \(name): one of \(JobSpec.DataFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self.format = format
        path = try c.decode(String.self, forKey: .path)
        split = try c.decodeIfPresent(String.self, forKey: .split)
        limit = try c.decodeIfPresent(Int.self, forKey: .limit)
    }
    enum CodingKeys: CodingKey { case format, path, split, limit }
}

// MARK: - export / embed

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write the query encoder alone, with torchvision's key names, for PyTorch.")
    @Option var checkpoint: String
    @Option var out: String
    @OptionGroup var roots: DataOptions

    func run() throws {
        let (file, info) = loadCheckpoint(checkpoint)
        let needsTrain = info.spec.augment.mean == nil || info.spec.augment.std == nil
        let train = needsTrain ? load(info.spec.data, roots.roots, size: info.spec.augment.size, channels: info.spec.model.in_channels) : nil
        let (mean, std) = normalization(info.spec, train: train)
        do {
            let exported = try Checkpoint.exportEncoder(file, mean: mean, std: std)
            try exported.write(to: URL(fileURLWithPath: out))
            print("wrote \(out): \(exported.tensors.count) tensors, \(info.spec.model.arch.rawValue) \(info.spec.model.stem.rawValue) width \(info.spec.model.width)")
        } catch { fail("\(error)") }
    }
}

struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Backbone features (after pooling, before the head) of every image, in dataset order, as an N x C float32 NPY file.")
    @Option var checkpoint: String
    @Option(help: "The images: the spec's data object, inline JSON or a file.") var data: String
    @Option var out: String
    @OptionGroup var roots: DataOptions
    @Option(help: "fp32, or bf16: the backbone runs under bf16 mixed precision (the features are written as float32).") var precision: Precision = .fp32

    func run() throws {
        let (file, info) = loadCheckpoint(checkpoint)
        let source: JobSpec.DataSource
        do { source = try JSONDecoder().decode(DataArgument.self, from: readJSONArgument(data)).source } catch { fail("bad data object: \(error)") }
        let images = load(source, roots.roots, size: info.spec.augment.size, channels: info.spec.model.in_channels)
        let needsTrain = info.spec.augment.mean == nil || info.spec.augment.std == nil
        let train = needsTrain ? load(info.spec.data, roots.roots, size: info.spec.augment.size, channels: info.spec.model.in_channels) : nil
        let (enc, mean, std) = encoder(from: file, info: info, train: train)
        let t0 = Date()
        let f = Evaluation.features(enc, images, mean: mean, std: std, precision: precision)
        let seconds = Date().timeIntervalSince(t0)
        let dim = enc.config.featureDimension
        do { try Readers.writeNPY(f, shape: [images.count, dim], to: URL(fileURLWithPath: out)) } catch { fail("\(error)") }
        print("wrote \(out): \(images.count) x \(dim) float32 (\(precision.rawValue), \(String(format: "%.2f", seconds)) s)")
    }
}

extension Precision: ExpressibleByArgument {}
