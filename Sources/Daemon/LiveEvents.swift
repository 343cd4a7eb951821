import Foundation
import Jobs

/// A live event of a job, for Server-Sent Events subscribers.
public struct JobStreamEvent: Sendable, Equatable {
    /// The SSE event names.
    public enum Name: String, Sendable {
        case state, metric, eval, checkpoint, restart, shutdown, log
    }
    public var name: Name
    /// The event's data (JSON made by `Codable`).
    public var json: String
    /// For `state` events, the job's new state (so a stream knows when it is over without re-parsing).
    public var state: JobState?
    public init(name: Name, json: String, state: JobState? = nil) { self.name = name; self.json = json; self.state = state }
    public init(_ name: Name, _ data: some Encodable) { self.init(name: name, json: DaemonJSON.string(data)) }

    /// A `state` event.
    static func state(_ state: JobState, reason: String) -> JobStreamEvent {
        JobStreamEvent(name: .state, json: DaemonJSON.string(StateData(state: state, reason: reason)), state: state)
    }

    /// A `log` event: a line as it was appended to the job's log.
    static func log(_ line: String) -> JobStreamEvent { JobStreamEvent(.log, LogData(line: line)) }

    /// The final event of every stream when the daemon stops.
    static let shutdown = JobStreamEvent(.shutdown, ShutdownData(reason: "the daemon is stopping"))

    struct StateData: Encodable { var state: JobState; var reason: String }
    struct ShutdownData: Encodable { var reason: String }
    struct LogData: Encodable { var line: String }
    struct RestartData: Encodable { var reason: String; var restart: Int; var max_restarts: Int }
    struct CheckpointData: Encodable { var name: String; var sha256: String }
}

/// The daemon's JSON: `Codable`, sorted keys, slashes unescaped, dates in ISO 8601 (as
/// `HTTPResponse.json` writes them).
enum DaemonJSON {
    static func data(_ value: some Encodable) -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        enc.dateEncodingStrategy = .iso8601
        return (try? enc.encode(value)) ?? Data("{}".utf8)
    }
    static func string(_ value: some Encodable) -> String { String(decoding: data(value), as: UTF8.self) }
    static func bytes(_ value: some Encodable) -> [UInt8] { Array(data(value)) }
}

/// Subscribers to jobs' live events.
final class LiveEvents: @unchecked Sendable {
    /// Safe to share: everything is guarded by `lock`.
    private let lock = NSLock()
    private var subscribers: [String: [UUID: @Sendable (JobStreamEvent) -> Void]] = [:]
    private var closed = false

    var isClosed: Bool { lock.lock(); defer { lock.unlock() }; return closed }

    func subscribe(_ id: String, _ handler: @escaping @Sendable (JobStreamEvent) -> Void) -> UUID {
        let token = UUID()
        lock.lock(); subscribers[id, default: [:]][token] = handler; lock.unlock()
        return token
    }

    /// How many live streams follow the job.
    func subscriberCount(_ id: String) -> Int { lock.lock(); defer { lock.unlock() }; return subscribers[id]?.count ?? 0 }

    func unsubscribe(_ id: String, _ token: UUID) {
        lock.lock(); subscribers[id]?[token] = nil; lock.unlock()
    }

    /// Appends a line to a job's log (`directory/job.log`) and publishes it as a `log` event.
    func appendLog(_ id: String, _ line: String, directory: URL) {
        publish(id, .log(JobLog.append(line, to: directory)))
    }

    /// Handlers run outside the lock: they may call back into the scheduler.
    func publish(_ id: String, _ event: JobStreamEvent) {
        lock.lock(); let subs = subscribers[id].map { Array($0.values) } ?? []; lock.unlock()
        for s in subs { s(event) }
    }

    /// Ends every stream with a final `shutdown` event; a stream opened later ends at once.
    func close() {
        lock.lock(); closed = true; let all = subscribers; lock.unlock()
        for (_, subs) in all {
            for s in subs.values { s(.shutdown) }
        }
    }
}
