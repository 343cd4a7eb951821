import Foundation
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
    public init(dataDirectory: URL, dataRoots: [String], maxRunning: Int = 1, threads: Int = 2,
                workerCommand: [String] = DaemonSettings.ownWorkerCommand) {
        self.dataDirectory = dataDirectory; self.dataRoots = dataRoots; self.maxRunning = maxRunning; self.threads = threads
        self.workerCommand = workerCommand
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
