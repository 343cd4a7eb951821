import Foundation
import Jobs
#if canImport(Glibc)
import Glibc
#endif

/// Settings the daemon runs with.
public struct DaemonSettings: Sendable {
    public var dataDirectory: URL
    public var dataRoots: [String]
    public var maxRunning: Int
    /// Compute threads (cores) shared by the running jobs.
    public var threads: Int
    /// The command that runs one job's worker process (`mocod worker`); the scheduler appends
    /// the job's options.
    public var workerCommand: [String]
    /// Where distributed jobs run (nil: the daemon runs none).
    public var mpi: MPISettings?
    public init(dataDirectory: URL, dataRoots: [String], maxRunning: Int = 1, threads: Int = 2,
                workerCommand: [String] = DaemonSettings.ownWorkerCommand, mpi: MPISettings? = nil) {
        self.dataDirectory = dataDirectory; self.dataRoots = dataRoots; self.maxRunning = maxRunning; self.threads = threads
        self.workerCommand = workerCommand; self.mpi = mpi
    }
    /// This executable (`/proc/self/exe`) with `worker`: right for mocod itself.
    public static var ownWorkerCommand: [String] {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let path = n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
        return [path, "worker"]
    }
    public var databasePath: String { dataDirectory.appendingPathComponent("mocod.sqlite").path }
    public func jobDirectory(_ id: String) -> URL { dataDirectory.appendingPathComponent("jobs/\(id)") }
}

/// How the daemon runs distributed jobs: Open MPI's `mpiexec` over the hosts of a hostfile.
public struct MPISettings: Sendable {
    /// The hostfile's path (shown in `/v1/info` and in errors).
    public var hostfile: String
    public var hosts: [HostSlots]
    /// Open MPI's launcher (`mpiexec` or `mpirun`).
    public var mpiexec: String
    /// Arguments given to every `mpiexec` before the job's own (e.g. `--mca btl tcp,self`).
    public var extraArguments: [String]
    /// The command that ties a child to the daemon's life and then runs the given command
    /// (`mocod tied --parent PID -- ...`): a daemon killed with -9 takes mpiexec, and so every
    /// rank, with it.
    public var tieCommand: [String]

    public init(hostfile: String, hosts: [HostSlots], mpiexec: String, extraArguments: [String] = [],
                tieCommand: [String] = MPISettings.ownTieCommand) {
        self.hostfile = hostfile; self.hosts = hosts; self.mpiexec = mpiexec; self.extraArguments = extraArguments
        self.tieCommand = tieCommand
    }

    /// Reads and checks the hostfile and the launcher.
    public static func load(hostfile: String, mpiexec: String?, extraArguments: [String] = []) throws -> MPISettings {
        guard let text = try? String(contentsOfFile: hostfile, encoding: .utf8) else {
            throw JobError(.invalid, "cannot read --mpi-hostfile \(hostfile)")
        }
        let hosts: [HostSlots]
        do { hosts = try Hostfile.parse(text) } catch { throw JobError(.invalid, "--mpi-hostfile \(hostfile): \(error)") }
        let launcher = mpiexec ?? findInPath("mpiexec")
        guard let launcher, FileManager.default.isExecutableFile(atPath: launcher) else {
            throw JobError(.invalid, mpiexec.map { "--mpiexec \($0) is not an executable" }
                ?? "mpiexec is not on PATH: install Open MPI (openmpi-bin) or give --mpiexec")
        }
        return MPISettings(hostfile: hostfile, hosts: hosts, mpiexec: launcher, extraArguments: extraArguments)
    }

    static func findInPath(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// This executable with `tied`.
    public static var ownTieCommand: [String] { [DaemonSettings.ownWorkerCommand[0], "tied"] }

    /// The command line that runs a distributed job's ranks on `placement`: the tie, mpiexec
    /// with one rank per slot (unbound: each rank sets its own threads), then every rank's
    /// worker command. Open MPI refuses root without `--allow-run-as-root`; mocod passes it
    /// when it runs as root itself.
    public func command(placement: [HostSlots], worker: [String], parent: Int32, asRoot: Bool) -> [String] {
        let ranks = placement.reduce(0) { $0 + $1.slots }
        return tieCommand + ["--parent", String(parent), "--", mpiexec, "-n", String(ranks), "--host", HostSlots.hostList(placement),
                             "--bind-to", "none"] + (asRoot ? ["--allow-run-as-root"] : []) + extraArguments + worker
    }
}
