import Dispatch
import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Limits, timeouts and the address of a server.
public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    /// 0 picks a free port (see `HTTPServer.port`).
    public var port = 0
    public var limits = HTTPLimits()
    /// Time allowed to receive a request's head, from its first byte → 408 and close.
    public var headerTimeout: Double = 10
    /// Time allowed between two reads of a body → 408 and close.
    public var bodyTimeout: Double = 10
    /// An idle keep-alive connection is closed after this long.
    public var idleTimeout: Double = 60
    /// At this many connections, one that is only waiting for a request head (the longest waiting)
    /// is closed to admit a new client; when none is, the new client is answered 503 and closed.
    public var maxConnections = 256
    /// How long `shutdown` lets in-flight requests finish.
    public var shutdownGrace: Double = 10
    /// When set, request handling is held to this CPU budget while it is limiting.
    public var cpuBudget: CPUBudget?
    public init() {}
}

/// A socket HTTP/1.1 server on POSIX sockets and Dispatch: non-blocking accept, a serial queue
/// per connection, keep-alive and pipelining in order, limits and timeouts, graceful shutdown.
/// Handlers run on the connection's queue (one request at a time per connection).
/// At the connection cap, connections that are only waiting for a request head are reclaimed,
/// longest waiting first, before a new client is refused: a client holding half-sent heads
/// (slowloris) cannot lock the others out until the header timeout.
public final class HTTPServer: @unchecked Sendable {
    /// Safe to share: the mutable fields are confined to `acceptQueue` (listener, connection set)
    /// or guarded by `lock` (counters read from other threads).
    public let configuration: ServerConfiguration
    let handler: Handler
    let logger: Logger
    let acceptQueue = DispatchQueue(label: "mocod.http.accept")
    private var listenFD: Int32 = -1
    private var acceptSource: DispatchSourceRead?
    private var sweeper: DispatchSourceTimer?
    private var connections: [ObjectIdentifier: Connection] = [:]
    private var shuttingDown = false
    private let lock = NSLock()
    private var _connectionCount = 0
    private var _reclaimedCount = 0
    public private(set) var port = 0

    public init(configuration: ServerConfiguration = ServerConfiguration(), logger: Logger = Logger(label: "mocod.http"),
                handler: @escaping Handler) {
        self.configuration = configuration
        self.handler = handler
        self.logger = logger
    }

    private var _stopping = false
    /// Set as soon as `shutdown` starts (read by connections from their own queues).
    var isStopping: Bool { lock.lock(); defer { lock.unlock() }; return _stopping }

    /// Open connections right now.
    public var connectionCount: Int { lock.lock(); defer { lock.unlock() }; return _connectionCount }

    /// Connections closed so far to admit a new client at the cap (each was waiting for a request head).
    public var reclaimedCount: Int { lock.lock(); defer { lock.unlock() }; return _reclaimedCount }

    /// Binds and starts accepting; returns the bound port.
    @discardableResult
    public func start() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ServerError("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(configuration.port).bigEndian)
        guard inet_pton(AF_INET, configuration.host, &addr.sin_addr) == 1 else {
            close(fd)
            throw ServerError("not an IPv4 address: \(configuration.host)")
        }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0 else {
            let e = String(cString: strerror(errno)); close(fd)
            throw ServerError("bind \(configuration.host):\(configuration.port): \(e)")
        }
        guard listen(fd, 512) == 0 else { let e = String(cString: strerror(errno)); close(fd); throw ServerError("listen: \(e)") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var out = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &out) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = Int(UInt16(bigEndian: out.sin_port))
        listenFD = fd
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: acceptQueue)
        source.setEventHandler { [weak self] in self?.acceptAll() }
        source.setCancelHandler { close(fd) }
        acceptSource = source
        source.resume()
        // One timer for every connection's deadline, ticking at a quarter of the shortest timeout.
        let tick = min(max(min(configuration.headerTimeout, configuration.bodyTimeout, configuration.idleTimeout) / 4, 0.01), 1)
        let sweep = DispatchSource.makeTimerSource(queue: acceptQueue)
        sweep.schedule(deadline: .now() + tick, repeating: tick, leeway: .milliseconds(Int(tick * 250)))
        sweep.setEventHandler { [weak self] in self?.sweepDeadlines() }
        sweeper = sweep
        sweep.resume()
        logger.info("listening", metadata: ["http.address": "\(configuration.host):\(port)"])
        return port
    }

    private func acceptAll() {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                if errno == EINTR { continue }
                return   // EAGAIN: drained (other errors: try again on the next event)
            }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            if shuttingDown {
                Connection.refuse(fd, status: .serviceUnavailable, message: "shutting down")
                continue
            }
            // At the cap, make room: a connection only waiting for a request head loses nothing by
            // being closed, and without this one client holding half-sent heads locks everyone out
            // until the header timeout. It leaves the set at once (so that the new client counts
            // against the cap in its place) and is closed on its own queue, which looks again: a
            // request that got under way meanwhile is served, and the set is one over the cap
            // until a connection closes (`readmit`); the loop brings it back under the cap.
            var full = connections.count >= configuration.maxConnections
            while full, let victim = Self.longestWaiting(connections.lazy.map { ($0.key, $0.value.waitingSince.load(ordering: .relaxed)) }) {
                connections.removeValue(forKey: victim)?.reclaim()
                full = connections.count >= configuration.maxConnections
            }
            if full {
                Connection.refuse(fd, status: .serviceUnavailable, message: "too many connections")
                continue
            }
            let c = Connection(fd: fd, server: self)
            connections[ObjectIdentifier(c)] = c
            lock.lock(); _connectionCount = connections.count; lock.unlock()
            c.start()
        }
    }

    /// Hands each connection whose deadline has passed to its own queue, which times it out.
    private func sweepDeadlines() {
        let now = DispatchTime.now().uptimeNanoseconds
        for c in connections.values {
            let d = c.deadline.load(ordering: .relaxed)
            if d != 0 && now >= d { c.deadlinePassed() }
        }
    }

    /// The connection to reclaim at the cap: the one that has waited longest for a request head
    /// (the smallest nonzero uptime since which it waits; 0 is a connection that is not waiting).
    /// Nil when none is waiting. A linear scan, only when the cap is reached: at most `maxConnections`.
    static func longestWaiting<Key>(_ candidates: some Sequence<(Key, UInt64)>) -> Key? {
        var best: (key: Key, since: UInt64)?
        for (key, since) in candidates where since != 0 && since < best?.since ?? .max { best = (key, since) }
        return best?.key
    }

    /// Called by a connection (on its own queue) when it is closed by `reclaim`.
    func connectionReclaimed() {
        lock.lock(); _reclaimedCount += 1; lock.unlock()
    }

    /// Called by a connection chosen for reclaiming (on its own queue) whose request got under way
    /// before it could be closed: it is served, so it goes back into the set. Its removal when it
    /// later closes is sent from the same queue, hence runs after this.
    func readmit(_ c: Connection) {
        acceptQueue.async {
            self.connections[ObjectIdentifier(c)] = c
            self.lock.lock(); self._connectionCount = self.connections.count; self.lock.unlock()
            if self.shuttingDown { c.beginShutdown() }   // it missed the shutdown's round
        }
    }

    /// Called by a connection (on its own queue) once it has closed. Idempotent: a reclaimed
    /// connection has already left the set.
    func connectionClosed(_ c: Connection) {
        acceptQueue.async {
            self.connections.removeValue(forKey: ObjectIdentifier(c))
            self.lock.lock(); self._connectionCount = self.connections.count; self.lock.unlock()
        }
    }

    /// Stops accepting, lets in-flight requests finish (idle connections close at once), and
    /// force-closes whatever remains after the grace period. Returns when all are closed.
    public func shutdown() {
        lock.lock(); _stopping = true; lock.unlock()
        let group = DispatchGroup()
        group.enter()
        acceptQueue.async {
            self.shuttingDown = true
            self.acceptSource?.cancel()
            self.acceptSource = nil
            for c in self.connections.values { c.beginShutdown() }
            group.leave()
        }
        group.wait()
        let deadline = Date().addingTimeInterval(configuration.shutdownGrace)
        while connectionCount > 0 && Date() < deadline { usleep(10_000) }
        acceptQueue.sync { for c in self.connections.values { c.forceClose() } }
        while connectionCount > 0 && Date() < deadline.addingTimeInterval(2) { usleep(10_000) }
        acceptQueue.sync { sweeper?.cancel(); sweeper = nil }
        logger.info("stopped")
    }
}

public struct ServerError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}
