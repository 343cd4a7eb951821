import Dispatch
import Foundation
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One client connection: a read source and a write source on one serial queue, around the pure
/// `RequestParser`, plus a deadline that the server's sweeper checks (one timer for all
/// connections: a Dispatch timer per request would cost more than serving a small request).
/// Requests are answered in order; while a response is being sent, later pipelined requests
/// wait in the parser's buffer. Under a `CPUBudget` that is limiting, each read and write is
/// charged its CPU time and a request may wait for its turn before it is parsed.
/// At the server's connection cap, a connection that is only waiting for a request head may be
/// reclaimed (closed) to admit a new client; see `waitingSince` and `reclaim()`.
final class Connection: @unchecked Sendable {
    /// Safe to share: every mutable field is touched only on `queue`.
    let fd: Int32
    let queue: DispatchQueue
    weak var server: HTTPServer?
    let configuration: ServerConfiguration
    let handler: Handler
    let logger: Logger

    private var parser: RequestParser
    private var readSource: DispatchSourceRead?
    private var writeSource: DispatchSourceWrite?
    private var writeArmed = false
    /// When the current phase times out, in `DispatchTime` uptime nanoseconds; 0 = never.
    /// Written on `queue`, read by the server's sweeper.
    let deadline = Atomic<UInt64>(0)
    /// Since when (`DispatchTime` uptime nanoseconds) the connection has been waiting for a
    /// complete request head with nothing in progress (see `isReclaimable`); 0 while it is not.
    /// Written on `queue`, read by the server when it reaches its connection cap.
    let waitingSince = Atomic<UInt64>(0)
    private var output: [UInt8] = []
    private var outputOffset = 0
    private var file: (fd: Int32, remaining: Int64)?
    /// Sending the file body waits for the CPU budget; `fileGranted` once the wait is over.
    private var filePaused = false
    private var fileGranted = false
    /// Close once the pending response is written: the response said `Connection: close`, or
    /// an error or a broken body made the connection unusable. No further request is read.
    private var closeAfterFlush = false
    /// The client half-closed: answer the complete requests already buffered, then close.
    private var sawEOF = false
    /// The read source is suspended (it must be resumed before it is cancelled and released).
    private var readSuspended = false
    /// Waiting for the server's CPU budget before answering the next request; `granted` once
    /// the wait is over (the next request then goes without asking again, however many reads
    /// its head takes). The head's deadline is put aside for the wait: the wait is the server's.
    private var throttled = false
    private var granted = false
    private var deadlineLeft: UInt64?
    private var closed = false
    private var shuttingDown = false
    /// A response (or stream) is being produced; pipelined requests wait.
    private var busy = false
    private var streamState: StreamState?

    private enum Phase { case idle, head, body, responding }
    private var phase = Phase.idle
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var requestStart = Date()

    init(fd: Int32, server: HTTPServer) {
        self.fd = fd
        self.server = server
        self.configuration = server.configuration
        self.handler = server.handler
        self.logger = server.logger
        self.parser = RequestParser(limits: server.configuration.limits)
        self.queue = DispatchQueue(label: "mocod.http.connection")
        // Waiting for its first request head from the moment it is accepted (not only once its
        // queue has started it: under load a burst of new connections would otherwise all be
        // unreclaimable, and the next client refused).
        waitingSince.store(DispatchTime.now().uptimeNanoseconds, ordering: .relaxed)
    }

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
            arm(configuration.idleTimeout)
            publishWaiting()
            rs.resume()
        }
    }

    // MARK: - Reading

    private func readable() {
        Priority.lowerCurrentThread()
        guard !closed else { return }
        let n = readBuffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n == 0 {
            // The client finished sending. A stream has no one left to read it (SSE disconnect);
            // otherwise answer what is complete, then close.
            if streamState != nil { close(); return }
            if phase == .idle && !busy && output.count == outputOffset && parser.bufferedByteCount == 0 { close(); return }
            sawEOF = true
            updateReadSource()
            if !busy {
                process()
                // Nothing is being answered: what remains can never complete.
                if !busy && !throttled { close() }
            }
            return
        }
        if n < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            close()
            return
        }
        parser.feed(readBuffer[0..<n])
        if phase == .idle {
            phase = .head
            requestStart = Date()
            arm(configuration.headerTimeout)
        } else if phase == .body {
            arm(configuration.bodyTimeout)
        }
        if !busy { process() }
    }

    private var readBuffer = [UInt8](repeating: 0, count: 65536)

    private func endThrottle() {
        throttled = false
        granted = true
        guard !closed else { return }
        updateReadSource()
        guard !busy else { return }
        if let left = deadlineLeft { deadline.store(DispatchTime.now().uptimeNanoseconds + max(left, 1), ordering: .relaxed) }
        deadlineLeft = nil
        process()
        if sawEOF && !busy && !throttled { close() }
    }

    /// Suspends the read source while the client half-closed or the connection waits for the
    /// CPU budget (bytes then stay in the kernel, and the client's sends back up); resumes it after.
    private func updateReadSource() {
        let suspend = sawEOF || throttled
        if suspend && !readSuspended { readSource?.suspend(); readSuspended = true }
        if !suspend && readSuspended { readSource?.resume(); readSuspended = false }
    }

    /// Thread CPU time when the running event handler started or was last charged (nil: not metering).
    private var meterStart: Double?

    /// Runs an event handler, charging its CPU time to the server's budget if it has one.
    /// Every read or write event ends by publishing whether the connection may be reclaimed.
    private func metered(_ body: (Connection) -> Void) {
        defer { publishWaiting() }
        guard let budget = configuration.cpuBudget, budget.isLimited else { body(self); return }
        meterStart = CPUBudget.threadCPUTime()
        body(self)
        chargeSoFar()
        meterStart = nil
    }

    /// Charges the CPU time since the last charge: before each request, so that one read
    /// carrying many pipelined requests is paced like separate ones.
    private func chargeSoFar() {
        guard let start = meterStart, let budget = configuration.cpuBudget else { return }
        let now = CPUBudget.threadCPUTime()
        budget.charge(now - start)
        meterStart = now
    }

    /// Whether the next request may start now. Under a CPU budget in debt it may not: the
    /// connection then waits (its read source suspended) and is let through after its turn.
    private func admitted() -> Bool {
        chargeSoFar()
        if granted { return true }   // spent when the head arrives
        guard let budget = configuration.cpuBudget else { return true }
        let (wait, reserved) = budget.admit()
        guard wait > 0 else { return true }
        throttled = true
        // The wait is the server's, not the client's: the head's deadline stops meanwhile.
        let d = deadline.load(ordering: .relaxed), t = DispatchTime.now().uptimeNanoseconds
        deadlineLeft = d == 0 ? nil : (d > t ? d - t : 0)
        cancelTimer()
        updateReadSource()
        // Waits end on a 50 ms grid, so that the connections let through in one stretch are
        // served together (fewer wake-ups, and fewer interruptions of training), and are capped
        // so that a long line cannot stall a connection: past the cap it goes.
        let now = DispatchTime.now().uptimeNanoseconds
        let grid: UInt64 = 50_000_000
        let end = (now + UInt64(min(wait, 2) * 1e9) + grid - 1) / grid * grid
        // The reservation ends when the wait does, even if the connection is gone by then.
        queue.asyncAfter(deadline: DispatchTime(uptimeNanoseconds: end)) { [weak self] in
            budget.release(reserved)
            self?.metered { $0.endThrottle() }
        }
        return false
    }

    /// Parses and answers buffered requests until more bytes are needed or a response is pending.
    private func process() {
        while !closed && !busy && !closeAfterFlush && !throttled {
            if head == nil && parser.bufferedByteCount > 0 && !admitted() { return }
            let event = parser.next()
            switch event {
            case .needMoreData:
                if parser.bufferedByteCount == 0 && phase == .idle { arm(configuration.idleTimeout) }
                return
            case .head(let h):
                granted = false
                head = h
                // A request is under way: from here until its response is written the connection
                // is not reclaimable (published now, not at the end of the event: the handler may be long).
                publishWaiting()
                body = []
                if phase != .head { phase = .head; requestStart = Date() }
                if parser.inMessage {
                    phase = .body
                    arm(configuration.bodyTimeout)
                    if h.expectsContinue { enqueue(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)); flush() }
                }
            case .body(let b):
                body += b
            case .end:
                guard let h = head else { return }
                head = nil
                phase = .responding
                cancelTimer()
                respond(to: h, body: body)
                body = []
            case .error(let e):
                let r = HTTPResponse.error(e.status, code: errorCode(e.status), message: e.reason)
                logger.info("rejected", metadata: ["http.status": "\(e.status.code)", "http.reason": "\(e.reason)"])
                send(r, keepAlive: false, isHead: false, requestID: nil)
                return
            }
        }
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

    private func respond(to h: HTTPRequestHead, body: [UInt8]) {
        let incoming = h.headers["X-Request-Id"]
        let requestID = incoming.flatMap { $0.count <= 64 && $0.utf8.allSatisfy(isTokenChar) ? $0 : nil } ?? UUID().uuidString.lowercased()
        let request = HTTPRequest(head: h, body: body, requestID: requestID)
        let response = handler(request)
        if server?.isStopping ?? true { shuttingDown = true }
        let keepAlive = h.keepAlive && !shuttingDown && !closeAfterFlush
        send(response, keepAlive: keepAlive, isHead: h.method == "HEAD", requestID: requestID)
        let ms = Date().timeIntervalSince(requestStart) * 1000
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
            let fallback = HTTPResponse.error(.internalServerError, code: "internal", message: "internal error")
            return send(fallback, keepAlive: false, isHead: isHead, requestID: requestID)
        }
        enqueue(headBytes)
        if !keepAlive { closeAfterFlush = true }
        busy = true
        if !noBody {
            switch response.body {
            case .bytes: enqueue(bodyBytes)
            case .file(let path, let offset, let length):
                let ffd = open(path, O_RDONLY | O_CLOEXEC)
                if ffd < 0 || lseek(ffd, off_t(offset), SEEK_SET) < 0 {
                    if ffd >= 0 { Glibc.close(ffd) }
                    closeAfterFlush = true   // the head promised bytes we cannot send
                } else {
                    file = (ffd, length)
                }
            case .stream(let producer):
                startStream(producer)
                flush()
                return
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
        guard !closed else { return }
        enqueue(ResponseSerializer.chunk(bytes))
        flush()
    }

    fileprivate func streamFinished() {
        guard !closed else { return }
        streamState = nil
        enqueue(ResponseSerializer.lastChunk)
        flush()
        publishWaiting()
    }

    // MARK: - Writing

    private func enqueue(_ bytes: [UInt8]) {
        if outputOffset > 0 && outputOffset == output.count { output.removeAll(keepingCapacity: true); outputOffset = 0 }
        output += bytes
    }

    /// Writes what the socket takes; refills from a file body; finishes the response when drained.
    private func flush() {
        guard !closed else { return }
        while true {
            if outputOffset < output.count {
                let n = output[outputOffset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0 {
                    if errno == EAGAIN || errno == EINTR { armWrite(); return }
                    close()
                    return
                }
                outputOffset += n
                continue
            }
            output.removeAll(keepingCapacity: true)
            outputOffset = 0
            if let f = file {
                // A file body is paced by the CPU budget too, a chunk at a time. After a pause
                // one chunk always goes: the pause's own cost must not buy another pause.
                if fileGranted {
                    fileGranted = false
                } else if let budget = configuration.cpuBudget, case let wait = budget.debt(), wait > 0 {
                    if !filePaused {
                        filePaused = true
                        disarmWrite()
                        cancelTimer()   // no idle timeout while the server holds the body back
                        queue.asyncAfter(deadline: .now() + min(wait, 2)) { [weak self] in
                            self?.metered { c in c.filePaused = false; c.fileGranted = true; c.flush() }
                        }
                    }
                    return
                }
                // Bounded memory: one 256 KiB chunk of the file at a time.
                let want = Int(min(f.remaining, 256 * 1024))
                var chunk = [UInt8](repeating: 0, count: want)
                let n = chunk.withUnsafeMutableBytes { read(f.fd, $0.baseAddress, want) }
                if n <= 0 { Glibc.close(f.fd); file = nil; closeAfterFlush = true; break }
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
        if busy {
            busy = false
            phase = .idle
            if closeAfterFlush || shuttingDown { close(); return }
            if parser.bufferedByteCount > 0 {
                phase = .head
                requestStart = Date()
                arm(configuration.headerTimeout)
                process()
            }
            if busy || throttled { return }
            if sawEOF { close(); return }   // every complete request is answered
            // Part of the next request is here: it keeps its header (or body) deadline; the
            // idle timeout would give a pipelined half head six times as long.
            if phase != .idle { return }
            arm(configuration.idleTimeout)
        } else if closeAfterFlush {
            close()
        }
    }

    private func armWrite() {
        if !writeArmed { writeArmed = true; writeSource?.resume() }
        // A client that stops reading is dropped after the idle timeout.
        arm(configuration.idleTimeout)
    }

    private func disarmWrite() {
        if writeArmed { writeArmed = false; writeSource?.suspend() }
    }

    // MARK: - Timers and closing

    private func arm(_ seconds: Double) {
        deadline.store(DispatchTime.now().uptimeNanoseconds + UInt64(max(seconds, 0) * 1e9), ordering: .relaxed)
    }

    private func cancelTimer() {
        deadline.store(0, ordering: .relaxed)
    }

    /// Called by the server's sweeper (from another queue) when the deadline may have passed.
    func deadlinePassed() {
        queue.async { [self] in
            let d = deadline.load(ordering: .relaxed)
            guard d != 0, DispatchTime.now().uptimeNanoseconds >= d else { return }   // re-armed meanwhile
            cancelTimer()
            timedOut()
            publishWaiting()
        }
    }

    private func timedOut() {
        guard !closed else { return }
        switch phase {
        case .head, .body:
            logger.info("timeout", metadata: ["http.phase": "\(phase == .head ? "head" : "body")"])
            busy = false
            send(.error(.requestTimeout, code: "request_timeout", message: "request not received in time"), keepAlive: false, isHead: false, requestID: nil)
        default:
            close()
        }
    }

    func beginShutdown() {
        queue.async { [self] in
            shuttingDown = true
            // Idle, or holding only part of a head: no request is under way, nothing is lost.
            if isReclaimable { close() }
        }
    }

    func forceClose() { queue.async { [self] in close() } }

    // MARK: - Reclaiming

    /// Only waiting for a request head: no request parsed or being answered, nothing left to
    /// write, no stream, no wait for the CPU budget (a throttled connection may hold a complete
    /// request the server has not looked at yet), not closing. Closing it loses no request.
    private var isReclaimable: Bool {
        !closed && !busy && !throttled && !closeAfterFlush && streamState == nil && file == nil && head == nil
            && (phase == .idle || phase == .head) && output.count == outputOffset
    }

    /// Publishes `waitingSince`: kept while the connection stays reclaimable (an idle keep-alive
    /// connection that starts sending its next head has been waiting since it became idle), 0 otherwise.
    private func publishWaiting() {
        if !isReclaimable {
            waitingSince.store(0, ordering: .relaxed)
        } else if waitingSince.load(ordering: .relaxed) == 0 {
            waitingSince.store(DispatchTime.now().uptimeNanoseconds, ordering: .relaxed)
        }
    }

    /// Called by the server (from its accept queue) after it dropped this connection from its set
    /// to admit a new client at the cap. Closes it if it is still only waiting for a request head,
    /// with a best-effort 503 if part of a head had arrived (an idle keep-alive connection just
    /// closes, as at its idle timeout). If a request got under way since the server looked, it is
    /// served: the server takes the connection back (see `HTTPServer.readmit`).
    func reclaim() {
        queue.async { [self] in
            guard !closed else { return }   // closed on its own meanwhile: nothing to give back
            guard isReclaimable else { server?.readmit(self); return }
            if phase == .head { Self.sendRefusal(fd, status: .serviceUnavailable, message: "too many connections") }
            logger.debug("reclaimed", metadata: ["http.phase": "\(phase == .head ? "head" : "idle")"])
            server?.connectionReclaimed()
            close()
        }
    }

    private func close() {
        guard !closed else { return }
        closed = true
        cancelTimer()
        waitingSince.store(0, ordering: .relaxed)
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
