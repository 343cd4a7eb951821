import ArgumentParser
import Daemon
import Dispatch
import Foundation
import HTTP
import Jobs
import Kernels
import Logging
import Worker

@main
enum Entry {
    static func main() {
        // OpenBLAS picks its kernel when it loads: re-exec with the right one before anything else.
        Runtime.ensureFastOpenBLAS()
        MocodCommand.main()
    }
}

/// `mocod` serves (the default); `mocod worker` is one job's process, started by the daemon.
struct MocodCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "mocod", abstract: "MoCo v2 training daemon with an HTTP API.",
                                                    subcommands: [Mocod.self, WorkerProcess.self, Tied.self], defaultSubcommand: Mocod.self)
}

/// Runs a command tied to the daemon's life (how the daemon starts mpiexec; see `Worker.tie`).
struct Tied: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tied", abstract: "Run a command that dies with the daemon (started by the daemon).",
                                                    shouldDisplay: false)
    @Option(help: "The daemon's process id.") var parent: Int32
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String]

    func run() throws {
        guard !command.isEmpty else { throw ValidationError("give the command after --") }
        throw ExitCode(Worker.tie(parent: parent, command: command))
    }
}

/// One job's worker process (started by the daemon; see `Worker`).
struct WorkerProcess: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "worker", abstract: "Train one job (started by the daemon, one per job).")
    @Option(help: "The job's directory (spec.json, checkpoints, metrics.jsonl).") var jobDir: String
    @Option(name: .customLong("data-root"), help: "Dataset root, repeatable.") var dataRoots: [String] = []
    @Option(help: "Cores to pin the worker to, comma-separated.") var cores: String?
    @Option(help: "The daemon's process id (the worker stops when it is gone).") var parent: Int32?

    func run() throws {
        var pinned: [Int]?
        if let cores {
            let list = cores.split(separator: ",").compactMap { Int($0) }
            guard !list.isEmpty, list.count == cores.split(separator: ",").count else { throw ValidationError("--cores must list core numbers, e.g. 0,1") }
            pinned = list
        }
        let status = Worker.run(Worker.Options(jobDirectory: URL(fileURLWithPath: jobDir), dataRoots: dataRoots, cores: pinned, parent: parent))
        throw ExitCode(status)
    }
}

/// The training daemon. Every option also reads from the environment (`MOCOD_PORT`, ...).
struct Mocod: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the daemon (the default command).")

    @Option(help: "Address to bind (env MOCOD_HOST). A non-loopback address needs --token-file.")
    var host = ProcessInfo.processInfo.environment["MOCOD_HOST"] ?? "127.0.0.1"
    @Option(help: "Port (env MOCOD_PORT; 0 picks a free one and prints it).")
    var port = Int(ProcessInfo.processInfo.environment["MOCOD_PORT"] ?? "") ?? 8080
    @Option(help: "Data directory: mocod.sqlite and jobs/ (env MOCOD_DATA_DIR).")
    var dataDir = ProcessInfo.processInfo.environment["MOCOD_DATA_DIR"] ?? "./mocod-data"
    @Option(name: .customLong("data-root"), help: "Dataset root, repeatable (env MOCOD_DATA_ROOTS, colon-separated; default /usr/share/datasets and DATA_DIR/datasets).")
    var dataRoots: [String] = (ProcessInfo.processInfo.environment["MOCOD_DATA_ROOTS"]).map { $0.split(separator: ":").map(String.init) } ?? []
    @Option(help: "File holding the bearer token, mode 0600 (env MOCOD_TOKEN_FILE).")
    var tokenFile = ProcessInfo.processInfo.environment["MOCOD_TOKEN_FILE"]
    @Option(help: "Jobs trained at once (env MOCOD_MAX_RUNNING).")
    var maxRunning = Int(ProcessInfo.processInfo.environment["MOCOD_MAX_RUNNING"] ?? "") ?? 1
    @Option(help: "Compute threads shared by running jobs (env MOCOD_THREADS; default: the core count).")
    var threads = Int(ProcessInfo.processInfo.environment["MOCOD_THREADS"] ?? "") ?? ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "While a job trains, the share of one core that answering requests may use; excess requests wait (env MOCOD_API_CPU_SHARE; 0: no limit).")
    var apiCPUShare = Double(ProcessInfo.processInfo.environment["MOCOD_API_CPU_SHARE"] ?? "") ?? 0.015
    @Option(help: "Open MPI hostfile (host slots=N per line): where jobs with distributed.processes above 1 run, a rank per slot (env MOCOD_MPI_HOSTFILE; default: none, such jobs are refused).")
    var mpiHostfile = ProcessInfo.processInfo.environment["MOCOD_MPI_HOSTFILE"]
    @Option(help: "Open MPI's mpiexec (env MOCOD_MPIEXEC; default: mpiexec on PATH).")
    var mpiexec = ProcessInfo.processInfo.environment["MOCOD_MPIEXEC"]
    @Option(help: "Extra arguments for every mpiexec, space-separated, e.g. '--mca btl tcp,self' (env MOCOD_MPIEXEC_ARGS).")
    var mpiexecArgs = ProcessInfo.processInfo.environment["MOCOD_MPIEXEC_ARGS"] ?? ""
    @Option(help: "Log level: trace, debug, info, warning, error (env MOCOD_LOG_LEVEL).")
    var logLevel = ProcessInfo.processInfo.environment["MOCOD_LOG_LEVEL"] ?? "info"

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0 to 65535") }
        guard apiCPUShare >= 0 && apiCPUShare.isFinite else { throw ValidationError("--api-cpu-share must be 0 (no limit) or a positive fraction of a core") }
        guard maxRunning >= 1, threads >= 1 else { throw ValidationError("--max-running and --threads must be at least 1") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level must be trace, debug, info, notice, warning, error or critical") }
    }

    func run() throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "mocod")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let token = try readToken()
        let loopback = host == "127.0.0.1" || host == "localhost" || host.hasPrefix("127.")
        guard loopback || token != nil else {
            throw ValidationError("refusing to bind \(host) without --token-file: the API would be open to the network")
        }
        let dir = URL(fileURLWithPath: dataDir).standardizedFileURL
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("jobs"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("datasets"), withIntermediateDirectories: true)
        let roots = dataRoots.isEmpty ? ["/usr/share/datasets", dir.appendingPathComponent("datasets").path] : dataRoots
        var mpi: MPISettings?
        if let mpiHostfile {
            do {
                mpi = try MPISettings.load(hostfile: mpiHostfile, mpiexec: mpiexec, extraArguments: mpiexecArgs.split(separator: " ").map(String.init))
            } catch let e as JobError { throw ValidationError(e.message) }
        }
        let settings = DaemonSettings(dataDirectory: dir, dataRoots: roots, maxRunning: maxRunning, threads: threads, mpi: mpi)
        let store = try JobStore(path: settings.databasePath)
        let budget = apiCPUShare > 0 ? CPUBudget(share: apiCPUShare) : nil
        let scheduler: Scheduler
        do {
            scheduler = try Scheduler(store: store, settings: settings, logger: logger) { running in budget?.setLimited(running > 0) }
        } catch let e as JobError {
            throw ValidationError(e.message)
        }
        let api = API(scheduler: scheduler, token: token, openAPI: OpenAPIDocument.text, budget: budget)
        var cfg = ServerConfiguration()
        cfg.host = host == "localhost" ? "127.0.0.1" : host
        cfg.port = port
        cfg.cpuBudget = budget
        var httpLogger = logger
        httpLogger.logLevel = logger.logLevel == .info ? .notice : logger.logLevel
        let server = HTTPServer(configuration: cfg, logger: httpLogger, handler: api.handler())
        api.attach(server)
        let bound = try server.start()
        logger.info("mocod listening", metadata: ["http.address": "\(cfg.host):\(bound)", "data_dir": "\(dir.path)", "isa": "\(Runtime.dnnlISA)"])
        print("mocod listening on http://\(cfg.host):\(bound)")
        fflush(nil)
        try scheduler.recover()

        // SIGTERM/SIGINT: stop accepting jobs (503), checkpoint running jobs, exit 0.
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        let done = DispatchSemaphore(value: 0)
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { done.signal() }
            s.resume()
            sources.append(s)
        }
        done.wait()
        logger.info("stopping: checkpointing running jobs")
        scheduler.shutdown()
        // Live event streams get a final event and end now, not at the server's grace period.
        scheduler.closeStreams()
        server.shutdown()
        logger.info("stopped")
    }

    func readToken() throws -> String? {
        guard let tokenFile else { return nil }
        var st = stat()
        guard stat(tokenFile, &st) == 0 else { throw ValidationError("cannot read --token-file \(tokenFile)") }
        guard st.st_mode & 0o077 == 0 else { throw ValidationError("--token-file \(tokenFile) must not be readable by group or others (chmod 600)") }
        let token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        guard token.count >= 16 else { throw ValidationError("the token in \(tokenFile) must be at least 16 characters") }
        return token
    }
}
