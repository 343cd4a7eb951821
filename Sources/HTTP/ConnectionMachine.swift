/// One HTTP/1.1 connection as a pure state machine: events come in (bytes read, the socket
/// drained, the clock, the server's CPU budget, shutdown), actions go out (answer this request,
/// reject, close), with the clock passed in as uptime nanoseconds. It owns the `RequestParser`
/// and every rule of the connection: requests are answered one at a time and in order
/// (pipelined requests wait in the parser's buffer), each phase has its deadline, a half-closed
/// client gets its complete requests answered, a connection waiting for the CPU budget stops
/// reading and its head's deadline stops too, and one that is only waiting for a request head
/// may be reclaimed at the server's connection cap.
///
/// The socket shell (`Connection`) reads and writes, runs the handler, keeps the output buffer
/// and file bodies, and feeds back what happened; it publishes `deadline`, `waitingSince` and
/// `wantsInput` after every event.
public struct ConnectionMachine: Sendable {
    /// The connection's timeouts, in nanoseconds.
    public struct Timeouts: Sendable, Equatable {
        /// To receive a request's head, from its first byte.
        public var header: UInt64
        /// Between two reads of a body.
        public var body: UInt64
        /// An idle keep-alive connection, or a client that stops reading a response.
        public var idle: UInt64

        public init(header: Double, body: Double, idle: Double) {
            func ns(_ s: Double) -> UInt64 { UInt64(max(s, 0) * 1e9) }
            self.header = ns(header); self.body = ns(body); self.idle = ns(idle)
        }
    }

    public enum Event: Sendable, Equatable {
        /// The socket is being watched.
        case started
        /// Bytes read from the socket.
        case input(ArraySlice<UInt8>)
        /// The client finished sending (a read returned 0).
        case inputEnded
        /// A read or write failed: the connection is gone.
        case socketFailed
        /// The answer to `.askTurn`: seconds to wait for the CPU budget (0: go now).
        case turn(wait: Double)
        /// The wait for the CPU budget is over.
        case turnCame
        /// A 100-continue, response head or body chunk could not all be written: the socket is full.
        case writeBlocked
        /// The budget holds a file body back: the client is not the one slow.
        case bodyHeld
        /// The response's body cannot be sent as its head promised (a file gone): close after it.
        case responseBroken
        /// The response is a stream (it ends when its producer finishes).
        case streamStarted
        /// The whole response (head, body, a stream's last chunk) is written.
        case responseSent
        /// The clock moved on: a deadline may have passed.
        case clock
        /// The server is stopping: close if no request is under way, or after the one that is.
        case shutdown
        /// The server took this connection out of its set at the connection cap.
        case reclaim
        /// Close now, whatever is under way.
        case forceClose
    }

    public enum Action: Sendable, Equatable {
        /// Ask the CPU budget for a turn and feed back `.turn(wait:)`. Last in its list.
        case askTurn
        /// Write `HTTP/1.1 100 Continue`.
        case sendContinue
        /// Run the handler and write its response; feed back `.responseSent` once it is written.
        /// `keepAlive` false: the response says `Connection: close`. Last in its list.
        case respond(HTTPRequestHead, body: [UInt8], keepAlive: Bool)
        /// Write this error with `Connection: close`; feed back `.responseSent` once written.
        case reject(HTTPStatus, reason: String)
        /// Best effort: a 503 for a client whose half-sent head is dropped at the cap (before `.close`).
        case refuse
        /// The server must take the connection back: a request got under way before it could be reclaimed.
        case readmit
        case log(Log)
        /// Close the socket; nothing follows.
        case close
    }

    public enum Log: Sendable, Equatable {
        case rejected(HTTPStatus, reason: String)
        case timedOut(phase: String)
        case reclaimed(phase: String)
    }

    public enum Phase: Sendable, Equatable {
        /// Nothing of the next request has arrived.
        case idle
        /// Part of a request head is here.
        case head
        /// The head is parsed; its body is arriving.
        case body
        /// A response (or an error) is being written.
        case responding
        case closed
    }

    /// The CPU budget's say over the next request.
    enum Turn: Sendable, Equatable {
        /// Not asked yet.
        case unasked
        /// `.askTurn` is out.
        case asking
        /// Told to wait; what was left of the head's deadline (nil: none) resumes afterwards.
        case waiting(left: UInt64?)
        /// The next request goes without asking again, however many reads its head takes.
        case granted
    }

    public let timeouts: Timeouts
    public private(set) var phase = Phase.idle
    /// When the current phase times out (uptime nanoseconds); nil: never.
    public private(set) var deadline: UInt64?
    /// Since when the connection has been reclaimable (only waiting for a request head); nil while it is not.
    public private(set) var waitingSince: UInt64?
    /// When the request under way started (its first byte), for the access log.
    public private(set) var requestStart: UInt64
    private(set) var turn = Turn.unasked
    private var parser: RequestParser
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    /// The client half-closed: answer the complete requests already buffered, then close.
    private var inputEnded = false
    /// Close once the response under way is written (it said `Connection: close`, it is an error,
    /// or its body broke). No further request is read.
    private var closeAfterResponse = false
    private var shuttingDown = false
    private var streaming = false

    /// A connection accepted at `now`: it waits for its first request head from that moment
    /// (not only once its queue starts it: under a burst of new connections they would otherwise
    /// all be unreclaimable, and the next client refused).
    public init(limits: HTTPLimits, timeouts: Timeouts, now: UInt64) {
        parser = RequestParser(limits: limits)
        self.timeouts = timeouts
        waitingSince = now
        requestStart = now
    }

    /// Whether the socket should be read: not after the client half-closed (the read event would
    /// fire for ever), and not while waiting for the CPU budget (the bytes stay in the kernel and
    /// the client's sends back up).
    public var wantsInput: Bool {
        if case .waiting = turn { return false }
        return !inputEnded && phase != .closed
    }

    public var isClosed: Bool { phase == .closed }

    /// Only waiting for a request head: nothing parsed or being answered, no wait for the CPU
    /// budget (a waiting connection may hold a complete request not looked at yet), not closing.
    /// Closing it loses no request. (An `.askTurn` is answered before any other event.)
    public var isReclaimable: Bool {
        (phase == .idle || phase == .head) && head == nil && !closeAfterResponse && !isWaitingForTurn
    }

    private var isWaitingForTurn: Bool { if case .waiting = turn { true } else { false } }

    /// Handles one event at `now` (uptime nanoseconds) and returns what the shell must do, in order.
    public mutating func handle(_ event: Event, now: UInt64) -> [Action] {
        var actions: [Action] = []
        if phase != .closed { step(event, now: now, &actions) }
        if isReclaimable { waitingSince = waitingSince ?? now } else { waitingSince = nil }
        return actions
    }

    private mutating func step(_ event: Event, now: UInt64, _ out: inout [Action]) {
        switch event {
        case .started:
            deadline = now + timeouts.idle

        case .input(let bytes):
            parser.feed(bytes)
            if phase == .idle {
                phase = .head
                requestStart = now
                deadline = now + timeouts.header
            } else if phase == .body {
                deadline = now + timeouts.body
            }
            advance(now, &out)

        case .inputEnded:
            // A stream has no one left to read it (an SSE client went away).
            if streaming { return close(&out) }
            inputEnded = true
            advance(now, &out)

        case .socketFailed, .forceClose:
            close(&out)

        case .turn(let wait):
            guard turn == .asking else { return }
            if wait > 0 {
                // The wait is the server's, not the client's: the head's deadline stops meanwhile.
                turn = .waiting(left: deadline.map { $0 > now ? $0 - now : 0 })
                deadline = nil
            } else {
                turn = .granted
                advance(now, &out)
            }

        case .turnCame:
            guard case .waiting(let left) = turn else { return }
            turn = .granted
            if let left { deadline = now + max(left, 1) }
            advance(now, &out)

        case .writeBlocked:
            // A client that stops reading is dropped after the idle timeout.
            deadline = now + timeouts.idle

        case .bodyHeld:
            deadline = nil

        case .responseBroken:
            closeAfterResponse = true

        case .streamStarted:
            if phase == .responding { streaming = true }

        case .responseSent:
            guard phase == .responding else { return }
            phase = .idle
            streaming = false
            if closeAfterResponse || shuttingDown { return close(&out) }
            if parser.bufferedByteCount > 0 {
                // The next pipelined request is here (in part): its head's deadline starts now.
                phase = .head
                requestStart = now
                deadline = now + timeouts.header
            } else {
                deadline = now + timeouts.idle
            }
            advance(now, &out)

        case .clock:
            guard let d = deadline, now >= d else { return }
            deadline = nil
            switch phase {
            case .head, .body:
                let name = phase == .head ? "head" : "body"
                out.append(.log(.timedOut(phase: name)))
                reject(.requestTimeout, "request not received in time", &out)
            default:
                close(&out)
            }

        case .shutdown:
            shuttingDown = true
            if isReclaimable { close(&out) }

        case .reclaim:
            guard isReclaimable else { return out.append(.readmit) }
            if phase == .head { out.append(.refuse) }
            out.append(.log(.reclaimed(phase: phase == .head ? "head" : "idle")))
            close(&out)
        }
    }

    /// Parses and answers buffered requests until more bytes are needed, a response is under way
    /// or the CPU budget is asked; then closes a half-closed connection with nothing left to answer.
    private mutating func advance(_ now: UInt64, _ out: inout [Action]) {
        parse(now, &out)
        // The client sent all it will: what remains buffered can never complete.
        if inputEnded && phase != .responding && phase != .closed && turn != .asking && !isWaitingForTurn { close(&out) }
    }

    private mutating func parse(_ now: UInt64, _ out: inout [Action]) {
        while phase != .responding && phase != .closed && !closeAfterResponse && turn != .asking && !isWaitingForTurn {
            if head == nil && parser.bufferedByteCount > 0 && turn != .granted {
                turn = .asking
                out.append(.askTurn)
                return
            }
            switch parser.next() {
            case .needMoreData:
                if parser.bufferedByteCount == 0 && phase == .idle { deadline = now + timeouts.idle }
                return
            case .head(let h):
                turn = .unasked   // the grant is spent
                head = h
                body = []
                if phase != .head { phase = .head; requestStart = now }
                if parser.inMessage {
                    phase = .body
                    deadline = now + timeouts.body
                    if h.expectsContinue { out.append(.sendContinue) }
                }
            case .body(let b):
                body += b
            case .end:
                guard let h = head else { return }
                head = nil
                phase = .responding
                deadline = nil
                let keepAlive = h.keepAlive && !shuttingDown
                if !keepAlive { closeAfterResponse = true }
                out.append(.respond(h, body: body, keepAlive: keepAlive))
                body = []
                return
            case .error(let e):
                out.append(.log(.rejected(e.status, reason: e.reason)))
                reject(e.status, e.reason, &out)
                return
            }
        }
    }

    private mutating func reject(_ status: HTTPStatus, _ reason: String, _ out: inout [Action]) {
        head = nil
        body = []
        phase = .responding
        closeAfterResponse = true
        out.append(.reject(status, reason: reason))
    }

    private mutating func close(_ out: inout [Action]) {
        phase = .closed
        deadline = nil
        out.append(.close)
    }
}
