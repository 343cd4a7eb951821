import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A token bucket of time: it fills at `rate` seconds per second up to `capacity`, and work is
/// charged against it. Work arriving while the bucket is in debt (or others are waiting) reserves
/// its estimated cost and is told how long to wait: the debt plus every earlier reservation, so
/// waiters are let through one after another rather than all at once when the debt clears.
/// A pure value: the caller supplies the clock.
public struct TokenBucket: Sendable, Equatable {
    public let rate: Double
    public let capacity: Double
    public private(set) var balance: Double
    public private(set) var updatedAt: Double
    /// Estimated cost of the work that is waiting.
    public private(set) var reserved: Double = 0

    public init(rate: Double, capacity: Double, now: Double) {
        precondition(rate > 0 && capacity >= 0)
        self.rate = rate
        self.capacity = capacity
        balance = capacity
        updatedAt = now
    }

    mutating func refill(now: Double) {
        guard now > updatedAt else { return }
        balance = min(capacity, balance + (now - updatedAt) * rate)
        updatedAt = now
    }

    /// The deepest debt, in seconds of waiting: work beyond it is forgiven, so that a long
    /// overload (when waiters past the wait cap go anyway) is not repaid for ever after.
    public static let maxDebtSeconds = 2.0

    /// Takes `amount` (it may overdraw, to at most `maxDebtSeconds` of refilling).
    public mutating func charge(_ amount: Double, now: Double) {
        refill(now: now)
        balance = max(balance - max(amount, 0), -rate * Self.maxDebtSeconds)
    }

    /// Seconds until the balance is back to zero; 0 when it is not in debt.
    public mutating func wait(now: Double) -> Double {
        refill(now: now)
        return balance >= 0 ? 0 : -balance / rate
    }

    /// 0 when work costing about `cost` may start now; otherwise reserves `cost` and returns the
    /// seconds to wait, after which the caller starts and calls `release(cost)`.
    public mutating func admit(cost: Double, now: Double) -> Double {
        refill(now: now)
        let ahead = reserved - balance
        guard ahead > 0 else { return 0 }
        reserved += cost
        return ahead / rate
    }

    /// A waiter's turn came: its reservation ends (its real cost is charged as it runs).
    public mutating func release(_ cost: Double) {
        reserved = max(0, reserved - cost)
    }

    /// Back to full (a new period of limiting starts with the whole burst).
    public mutating func reset(now: Double) {
        balance = capacity
        updatedAt = now
        reserved = 0
    }
}

/// Caps the CPU time the server spends on requests while the owner says so (mocod: while a
/// job trains). Connections charge the thread CPU time of each read and write they handle; a
/// connection with a request to answer while the bucket is in debt waits, which in turn slows
/// the client. `share` is a fraction of one core; the burst is half a second of it.
public final class CPUBudget: @unchecked Sendable {
    /// Safe to share: `bucket` and `limited` are guarded by `lock`.
    public let share: Double
    private let lock = NSLock()
    private var bucket: TokenBucket
    private var limited = false
    /// Running average of a charge (about one request's CPU time), the cost a waiter reserves.
    private var typicalCharge = 50e-6
    private var waits = 0
    private var waitSeconds = 0.0

    public init(share: Double) {
        precondition(share > 0)
        self.share = share
        bucket = TokenBucket(rate: share, capacity: share * 0.5, now: Self.now())
    }

    /// Turns limiting on or off; turning it on starts from a full bucket.
    public func setLimited(_ on: Bool) {
        lock.lock(); defer { lock.unlock() }
        if on && !limited { bucket.reset(now: Self.now()) }
        limited = on
    }

    public var isLimited: Bool { lock.lock(); defer { lock.unlock() }; return limited }

    /// Requests made to wait so far, and the seconds they were told to wait in all.
    public var waited: (requests: Int, seconds: Double) { lock.lock(); defer { lock.unlock() }; return (waits, waitSeconds) }

    func charge(_ seconds: Double) {
        guard seconds > 0 else { return }
        lock.lock(); defer { lock.unlock() }
        guard limited else { return }
        bucket.charge(seconds, now: Self.now())
        typicalCharge += (seconds - typicalCharge) * 0.05
    }

    /// How long the next request must wait (0: go now) and the cost it reserved meanwhile,
    /// to `release` when it starts.
    func admit() -> (wait: Double, reserved: Double) {
        lock.lock(); defer { lock.unlock() }
        guard limited else { return (0, 0) }
        let cost = max(typicalCharge, 5e-6)
        let wait = bucket.admit(cost: cost, now: Self.now())
        if wait > 0 { waits += 1; waitSeconds += min(wait, 2) }
        return (wait, wait > 0 ? cost : 0)
    }

    /// Seconds until the bucket is out of debt (0 when it is not, or when not limiting). Unlike
    /// `admit`, it reserves nothing: for pacing work already under way, such as a file body.
    func debt() -> Double {
        lock.lock(); defer { lock.unlock() }
        return limited ? bucket.wait(now: Self.now()) : 0
    }

    func release(_ reserved: Double) {
        lock.lock(); defer { lock.unlock() }
        bucket.release(reserved)
    }

    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }

    /// CPU time of the calling thread, in seconds.
    static func threadCPUTime() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

}

/// The CPU budget as one connection meets it: the thread CPU time of each event handler is
/// charged (and charged again before each request, so that one read carrying many pipelined
/// requests is paced like separate ones), each request is given its turn, and a file body goes
/// a chunk at a time while the budget is not in debt. With no budget, or one not limiting,
/// everything goes at once.
struct Pacer {
    let budget: CPUBudget?
    /// Thread CPU time when the running event handler started or was last charged (nil: not metering).
    private var meterStart: Double?
    private var body = BodyPacing.free

    enum BodyPacing { case free, held, granted }

    /// A request told to wait: when its turn comes (uptime nanoseconds), the wait in seconds,
    /// and the cost it reserved meanwhile, to release when the turn comes.
    struct Turn: Equatable {
        let until: UInt64
        let seconds: Double
        let reserved: Double
    }

    /// What to do with the next chunk of a file body.
    enum Chunk: Equatable {
        case send
        /// Hold the body back this many seconds, then call `bodyHoldEnded` and go on.
        case hold(Double)
        /// A hold is already under way.
        case holding
    }

    init(budget: CPUBudget?) { self.budget = budget }

    mutating func beginEvent() {
        guard let budget, budget.isLimited else { return }
        meterStart = CPUBudget.threadCPUTime()
    }

    mutating func endEvent() {
        chargeSoFar()
        meterStart = nil
    }

    private mutating func chargeSoFar() {
        guard let start = meterStart, let budget else { return }
        let now = CPUBudget.threadCPUTime()
        budget.charge(now - start)
        meterStart = now
    }

    /// Nil when the next request may start now; otherwise its turn.
    mutating func turn(now: UInt64) -> Turn? {
        chargeSoFar()
        guard let budget else { return nil }
        let (wait, reserved) = budget.admit()
        guard wait > 0 else { return nil }
        let until = Self.turnEnds(now: now, wait: wait)
        return Turn(until: until, seconds: Double(until - now) * 1e-9, reserved: reserved)
    }

    /// Waits end on a 50 ms grid, so that the connections let through in one stretch are served
    /// together (fewer wake-ups, and fewer interruptions of training), and are capped at 2 s so
    /// that a long line cannot stall a connection: past the cap it goes.
    static func turnEnds(now: UInt64, wait: Double) -> UInt64 {
        let grid: UInt64 = 50_000_000
        return (now + UInt64(min(max(wait, 0), 2) * 1e9) + grid - 1) / grid * grid
    }

    /// After a hold one chunk always goes: the hold's own cost must not buy another hold.
    mutating func bodyChunk() -> Chunk {
        switch body {
        case .held: return .holding
        case .granted: body = .free; return .send
        case .free:
            guard let budget, case let wait = budget.debt(), wait > 0 else { return .send }
            body = .held
            return .hold(min(wait, 2))
        }
    }

    mutating func bodyHoldEnded() { body = .granted }
}
