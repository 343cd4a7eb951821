/// When one live event stream writes (`GET /v1/jobs/{id}/events?interval_ms=N`): a pure state
/// machine, with the clock passed in, between the job's events and the socket.
///
/// - `metric` and `log` events (many: one a training step) are held and written together at most
///   once every `interval` seconds, so that a client wakes once an interval however fast the job
///   steps. The first after a quiet interval goes out at once.
/// - Any other event (`state`, `eval`, `checkpoint`, `restart`, `shutdown`) goes out at once, after
///   the held ones: order is kept, and nothing held is lost before a stream's last event.
/// - With nothing written for `heartbeat` seconds, the stream writes a comment line.
///
/// `interval` 0 writes every event as it comes.
struct EventPacer {
    enum Action: Equatable {
        /// Nothing is due.
        case wait
        /// Write these events together, in one write.
        case write([JobStreamEvent])
        /// Write a heartbeat comment.
        case heartbeat
    }

    let interval: Double
    let heartbeat: Double
    private(set) var held: [JobStreamEvent] = []
    /// When events were last written.
    private var lastWrite: Double
    /// When anything (events or a heartbeat) was last written.
    private var heartbeatFrom: Double

    init(interval: Double, heartbeat: Double = 15, now: Double) {
        self.interval = interval
        self.heartbeat = heartbeat
        // The first point may go out at once.
        self.lastWrite = now - interval
        self.heartbeatFrom = now
    }

    static func isHeld(_ e: JobStreamEvent) -> Bool { e.name == .metric || e.name == .log }

    /// An event came.
    mutating func received(_ e: JobStreamEvent, now: Double) -> Action {
        held.append(e)
        // Held events go once the interval is up, even while events keep coming.
        if Self.isHeld(e) && now - lastWrite < interval { return .wait }
        return flush(now: now)
    }

    /// The clock reached `now` with no event: the held events, once due; else a heartbeat, once due.
    mutating func tick(now: Double) -> Action {
        if !held.isEmpty && now >= lastWrite + interval { return flush(now: now) }
        if now >= heartbeatFrom + heartbeat {
            heartbeatFrom = now
            return .heartbeat
        }
        return .wait
    }

    /// How long the stream may wait for its next event before `tick` has something to do.
    func wait(now: Double) -> Double {
        var until = heartbeatFrom + heartbeat
        if !held.isEmpty { until = min(until, lastWrite + interval) }
        return max(0, until - now)
    }

    /// Writes every held event.
    private mutating func flush(now: Double) -> Action {
        defer { held = [] }
        lastWrite = now
        heartbeatFrom = now
        return .write(held)
    }
}
