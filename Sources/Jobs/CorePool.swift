/// The daemon's compute cores and which are taken, as a pure value: a job is admitted only with
/// as many free cores as it has threads, so concurrent jobs never share a core and no job's
/// thread count is cut.
public struct CorePool: Sendable, Equatable {
    /// Every core the daemon may use, ascending.
    public let cores: [Int]
    /// Free ones, ascending.
    public private(set) var free: [Int]

    public init(cores: [Int]) {
        self.cores = cores.sorted()
        free = self.cores
    }

    /// The `n` lowest free cores, now taken; nil (nothing taken) when fewer are free or `n` is
    /// not positive.
    public mutating func take(_ n: Int) -> [Int]? {
        guard n >= 1, n <= free.count else { return nil }
        let taken = Array(free.prefix(n))
        free.removeFirst(n)
        return taken
    }

    /// Gives cores back (ones not in the pool, or already free, are ignored).
    public mutating func give(_ taken: [Int]) {
        for c in taken where cores.contains(c) && !free.contains(c) { free.append(c) }
        free.sort()
    }
}
