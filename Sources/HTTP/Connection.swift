import Dispatch
import Foundation
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One client connection's socket shell around the pure `ConnectionMachine`: a read source and
/// a write source on one serial queue, the handler, the output buffer and file bodies. Every
/// rule (phases, deadlines, pipelining, half-close, reclaiming, shutdown) is the machine's; the
/// shell turns socket and timer events into its events and carries out its actions. After each
/// event it publishes the machine's deadline (the server's one sweeper checks it: a Dispatch
/// timer per request would cost more than serving a small request) and whether the connection
/// may be reclaimed at the server's connection cap (`waitingSince`). Under a `CPUBudget` that is
/// limiting, the `Pacer` charges each read and write its CPU time and gives each request its turn.
final class Connection: @unchecked Sendable {
    /// Safe to share: every mutable field is touched only on `queue`.
    let fd: Int32
    let queue: DispatchQueue
    weak var server: HTTPServer?
    let configuration: ServerConfiguration
    let handler: Handler
    let logger: Logger

    private var machine: ConnectionMachine
    private var pacer: Pacer
    private var readSource: DispatchSourceRead?
    private var writeSource: DispatchSourceWrite?
    private var writeArmed = false
    /// The read source is suspended (it must be resumed before it is cancelled and released).
    private var readSuspended = false
    /// The machine's deadline in `DispatchTime` uptime nanoseconds, 0 = never; read by the server's sweeper.
    let deadline = Atomic<UInt64>(0)
    /// The machine's `waitingSince` (0: not reclaimable); read by the server at its connection cap.
    let waitingSince = Atomic<UInt64>(0)
    private var output: [UInt8] = []
    private var outputOffset = 0
    private var file: (fd: Int32, remaining: Int64)?
    private var streamState: StreamState?
    /// A response is being written (set when its head is queued; the machine is told when it is drained).
    private var responding = false
    private var readBuffer = [UInt8](repeating: 0, count: 65536)

    init(fd: Int32, server: HTTPServer) {
        self.fd = fd
        self.server = server
        self.configuration = server.configuration
        self.handler = server.handler
        self.logger = server.logger
        let c = server.configuration
        machine = ConnectionMachine(limits: c.limits, timeouts: .init(header: c.headerTimeout, body: c.bodyTimeout, idle: c.idleTimeout),
                                    now: Self.now())
        pacer = Pacer(budget: c.cpuBudget)
        self.queue = DispatchQueue(label: "mocod.http.connection")
        waitingSince.store(machine.waitingSince ?? 0, ordering: .relaxed)
    }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// Answers a connection that will not be served (over the limit, shutting down) and closes it.
    static func refuse(_ fd: Int32, status: HTTPStatus, message: String) {
        sendRefusal(fd, status: status, message: message)
        Glibc.shutdown(fd, Int32(SHUT_WR))
        Glibc.close(fd)
    }

    /// Sends a complete `Connection: close` error response in one non-blocking send, best effort:
    /// whatever the socket does not take at once is dropped (the connection is closed next).
    private static func sendRefusal(_ fd: Int32, status: HTTPStatus, message: String) {
        let r = HTTPResponse.error(status, code: status == .serviceUnavailable ? "unavailable" : "refused", message: message,
                                   headers: HTTPHeaders([("Connection", "close"), ("Retry-After", "1")]))
        if case .bytes(let b) = r.body, var bytes = try? ResponseSerializer.head(status, r.headers + [("Content-Length", String(b.count))]) {
            bytes += b
            _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
        }
    }

    func start() {
        queue.async { [self] in
            let rs = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
            rs.setEventHandler { [weak self] in self?.metered { $0.readable() } }
            readSource = rs
            let ws = DispatchSource.makeWriteSource(fileDescriptor: fd, queue: queue)
            ws.setEventHandler { [weak self] in self?.metered { $0.flush() } }
            writeSource = ws
            feed(.started)
            rs.resume()
        }
    }

    // MARK: - The machine

    /// Hands an event to the machine, publishes its state, and carries out its actions (which may
    /// feed further events: a turn answered at once, a response written at once).
    private func feed(_ event: ConnectionMachine.Event) {
        let actions = machine.handle(event, now: Self.now())
        publish()
        for action in actions { perform(action) }
    }

    private func publish() {
        deadline.store(machine.deadline ?? 0, ordering: .relaxed)
        waitingSince.store(machine.waitingSince ?? 0, ordering: .relaxed)
        guard !machine.isClosed else { return }
        let suspend = !machine.wantsInput
        if suspend && !readSuspended { readSource?.suspend(); readSuspended = true }
        if !suspend && readSuspended { readSource?.resume(); readSuspended = false }
    }

    private func perform(_ action: ConnectionMachine.Action) {
        switch action {
        case .askTurn:
            guard let turn = pacer.turn(now: Self.now()) else { return feed(.turn(wait: 0)) }
            feed(.turn(wait: turn.seconds))
            // The reservation ends when the wait does, even if the connection is gone by then.
            let budget = pacer.budget
            queue.asyncAfter(deadline: DispatchTime(uptimeNanoseconds: turn.until)) { [weak self] in
                budget?.release(turn.reserved)
                self?.metered { $0.feed(.turnCame) }
            }
        case .sendContinue:
            enqueue(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
            flush()
        case .respond(let head, let body, let keepAlive):
            respond(to: head, body: body, keepAlive: keepAlive)
        case .reject(let status, let reason):
            send(.error(status, code: errorCode(status), message: reason), keepAlive: false, isHead: false, requestID: nil)
        case .refuse:
            Self.sendRefusal(fd, status: .serviceUnavailable, message: "too many connections")
        case .readmit:
            server?.readmit(self)
        case .log(let log):
            switch log {
            case .rejected(let status, let reason):
                logger.info("rejected", metadata: ["http.status": "\(status.code)", "http.reason": "\(reason)"])
            case .timedOut(let phase):
                logger.info("timeout", metadata: ["http.phase": "\(phase)"])
            case .reclaimed(let phase):
                logger.debug("reclaimed", metadata: ["http.phase": "\(phase)"])
                server?.connectionReclaimed()
            }
        case .close:
            close()
        }
    }

    /// Runs an event handler, charging its CPU time to the server's budget if it is limiting.
    private func metered(_ body: (Connection) -> Void) {
        pacer.beginEvent()
        body(self)
        pacer.endEvent()
    }

    // MARK: - Reading

    private func readable() {
        Priority.lowerCurrentThread()
        guard !machine.isClosed else { return }
        let n = readBuffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n == 0 { return feed(.inputEnded) }
        if n < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            return feed(.socketFailed)
        }
        feed(.input(readBuffer[0..<n]))
    }

    private func errorCode(_ s: HTTPStatus) -> String {
        switch s.code {
        case 408: "request_timeout"
        case 413: "payload_too_large"
        case 414: "uri_too_long"
        case 431: "header_fields_too_large"
        case 501: "not_implemented"
        case 505: "version_not_supported"
        default: "bad_request"
        }
    }

    // MARK: - Responding

    private func respond(to h: HTTPRequestHead, body: [UInt8], keepAlive: Bool) {
        let incoming = h.headers["X-Request-Id"]
        let requestID = incoming.flatMap { $0.count <= 64 && $0.utf8.allSatisfy(isTokenChar) ? $0 : nil } ?? UUID().uuidString.lowercased()
        let request = HTTPRequest(head: h, body: body, requestID: requestID)
        let start = machine.requestStart
        let response = handler(request)
        let stopping = server?.isStopping ?? true
        if stopping { feed(.shutdown) }
        send(response, keepAlive: keepAlive && !stopping, isHead: h.method == "HEAD", requestID: requestID)
        let ms = Double(Self.now() - min(start, Self.now())) / 1e6
        logger.info("request", metadata: ["http.method": "\(h.method)", "http.target": "\(h.target)", "http.status": "\(response.status.code)",
                                          "http.request_id": "\(requestID)", "http.duration_ms": "\(String(format: "%.2f", ms))"])
    }

    private func send(_ response: HTTPResponse, keepAlive: Bool, isHead: Bool, requestID: String?) {
        var headers = response.headers
        if let requestID { headers.set("X-Request-Id", requestID) }
        if !keepAlive { headers.set("Connection", "close") }
        var bodyBytes: [UInt8] = []
        switch response.body {
        case .bytes(let b):
            headers.set("Content-Length", String(b.count))
            bodyBytes = b
        case .file(_, _, let length):
            headers.set("Content-Length", String(length))
        case .stream:
            headers.set("Transfer-Encoding", "chunked")
        }
        let noBody = isHead || response.status.code == 304 || response.status.code == 204
        if noBody, response.status.code == 204 { headers.remove("Content-Length") }
        let headBytes: [UInt8]
        do { headBytes = try ResponseSerializer.head(response.status, headers) } catch {
            logger.error("handler produced an invalid header", metadata: ["http.header": "\(error.name)"])
            feed(.responseBroken)   // the fallback says `Connection: close`
            let fallback = HTTPResponse.error(.internalServerError, code: "internal", message: "internal error")
            return send(fallback, keepAlive: false, isHead: isHead, requestID: requestID)
        }
        enqueue(headBytes)
        responding = true
        if !noBody {
            switch response.body {
            case .bytes: enqueue(bodyBytes)
            case .file(let path, let offset, let length):
                let ffd = open(path, O_RDONLY | O_CLOEXEC)
                if ffd < 0 || lseek(ffd, off_t(offset), SEEK_SET) < 0 {
                    if ffd >= 0 { Glibc.close(ffd) }
                    feed(.responseBroken)   // the head promised bytes we cannot send
                } else {
                    file = (ffd, length)
                }
            case .stream(let producer):
                feed(.streamStarted)
                startStream(producer)
            }
        }
        flush()
    }

    private func startStream(_ producer: @escaping @Sendable (StreamWriter) -> Void) {
        let state = StreamState(connection: self)
        streamState = state
        DispatchQueue.global().async {
            producer(state)
            state.finish()
        }
    }

    /// Called on `queue` by the stream writer.
    fileprivate func streamWrite(_ bytes: [UInt8]) {
        guard !machine.isClosed else { return }
        enqueue(ResponseSerializer.chunk(bytes))
        flush()
    }

    fileprivate func streamFinished() {
        guard !machine.isClosed else { return }
        streamState = nil
        enqueue(ResponseSerializer.lastChunk)
        flush()
    }

    // MARK: - Writing

    private func enqueue(_ bytes: [UInt8]) {
        if outputOffset > 0 && outputOffset == output.count { output.removeAll(keepingCapacity: true); outputOffset = 0 }
        output += bytes
    }

    /// Writes what the socket takes; refills from a file body; reports the response written once
    /// it is drained (a stream's once its producer has finished).
    private func flush() {
        guard !machine.isClosed else { return }
        while true {
            if outputOffset < output.count {
                let n = output[outputOffset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0 {
                    if errno == EAGAIN || errno == EINTR { armWrite(); return feed(.writeBlocked) }
                    return feed(.socketFailed)
                }
                outputOffset += n
                continue
            }
            output.removeAll(keepingCapacity: true)
            outputOffset = 0
            if let f = file {
                // A file body is paced by the CPU budget too, a chunk at a time.
                switch pacer.bodyChunk() {
                case .send: break
                case .holding: return
                case .hold(let seconds):
                    disarmWrite()
                    feed(.bodyHeld)   // no idle timeout while the server holds the body back
                    queue.asyncAfter(deadline: .now() + seconds) { [weak self] in
                        self?.metered { c in c.pacer.bodyHoldEnded(); c.flush() }
                    }
                    return
                }
                // Bounded memory: one 256 KiB chunk of the file at a time.
                let want = Int(min(f.remaining, 256 * 1024))
                var chunk = [UInt8](repeating: 0, count: want)
                let n = chunk.withUnsafeMutableBytes { read(f.fd, $0.baseAddress, want) }
                if n <= 0 { Glibc.close(f.fd); file = nil; feed(.responseBroken); break }
                if n < want { chunk.removeLast(want - n) }
                output = chunk
                let left = f.remaining - Int64(n)
                if left == 0 { Glibc.close(f.fd); file = nil } else { file = (f.fd, left) }
                continue
            }
            break
        }
        disarmWrite()
        if streamState != nil { return }   // a stream is still producing
        if responding { responding = false; feed(.responseSent) }
    }

    private func armWrite() {
        if !writeArmed { writeArmed = true; writeSource?.resume() }
    }

    private func disarmWrite() {
        if writeArmed { writeArmed = false; writeSource?.suspend() }
    }

    // MARK: - Timers, shutdown, reclaiming

    /// Called by the server's sweeper (from another queue) when the deadline may have passed.
    func deadlinePassed() {
        queue.async { [self] in feed(.clock) }
    }

    func beginShutdown() { queue.async { [self] in feed(.shutdown) } }

    func forceClose() { queue.async { [self] in feed(.forceClose) } }

    /// Called by the server (from its accept queue) after it dropped this connection from its set
    /// to admit a new client at the cap. The machine closes it if it is still only waiting for a
    /// request head, with a best-effort 503 if part of a head had arrived (an idle keep-alive
    /// connection just closes, as at its idle timeout). If a request got under way since the
    /// server looked, it is served: the server takes the connection back (`HTTPServer.readmit`).
    func reclaim() {
        queue.async { [self] in feed(.reclaim) }
    }

    /// Carries out the machine's `.close`: the file, the stream, the sources and the socket.
    private func close() {
        responding = false
        if let f = file { Glibc.close(f.fd); file = nil }
        streamState?.markClosed()
        streamState = nil
        // Break the source ↔ connection cycle; the read source's cancel handler closes the socket.
        let rs = readSource, ws = writeSource
        readSource = nil
        writeSource = nil
        if !writeArmed { ws?.resume() }
        ws?.cancel()
        if readSuspended { rs?.resume() }
        let fd = self.fd
        if let rs {
            rs.setCancelHandler { Glibc.close(fd) }
            rs.cancel()
        } else {
            Glibc.close(fd)
        }
        server?.connectionClosed(self)
    }
}

/// The writer handed to a streaming response's producer; hops each chunk onto the connection's queue.
final class StreamState: StreamWriter, @unchecked Sendable {
    /// Safe to share: `closedFlag` is guarded by `lock`; the connection is only touched on its queue.
    private let lock = NSLock()
    private var closedFlag = false
    private weak var connection: Connection?

    init(connection: Connection) { self.connection = connection }

    var isClosed: Bool { lock.lock(); defer { lock.unlock() }; return closedFlag || connection == nil }

    func markClosed() { lock.lock(); closedFlag = true; lock.unlock() }

    @discardableResult
    func write(_ bytes: [UInt8]) -> Bool {
        guard !isClosed, let c = connection else { return false }
        c.queue.async { c.streamWrite(bytes) }
        return true
    }

    func finish() {
        guard let c = connection else { return }
        c.queue.async { c.streamFinished() }
    }
}

extension HTTPHeaders {
    static func + (h: HTTPHeaders, extra: [(String, String)]) -> HTTPHeaders {
        var out = h
        for (n, v) in extra { out.add(n, v) }
        return out
    }
}

/// Keeps HTTP work from competing with training: each Dispatch worker thread that serves a
/// connection is given a lower scheduling priority (`nice`) the first time it does. Training
/// runs on its own threads (and OpenMP's), never on Dispatch's, so only the API slows under load.
enum Priority {
    /// The nice value of HTTP threads.
    static let nice: Int32 = 10

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    static func lowerCurrentThread() {
        guard pthread_getspecific(key) == nil else { return }
        // On Linux, PRIO_PROCESS with id 0 sets the nice value of the calling thread only.
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, Priority.nice)
        pthread_setspecific(key, UnsafeRawPointer(bitPattern: 1))
    }
}
