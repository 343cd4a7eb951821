/// Some MPI slots on one host: where a distributed job's ranks run (`mpiexec --host host:slots`).
public struct HostSlots: Sendable, Equatable, Codable {
    public var host: String
    public var slots: Int
    public init(host: String, slots: Int) { self.host = host; self.slots = slots }

    /// `mpiexec --host`'s form of a placement: `a:2,b:1`.
    public static func hostList(_ placement: [HostSlots]) -> String {
        placement.map { "\($0.host):\($0.slots)" }.joined(separator: ",")
    }
}

/// An Open MPI hostfile (`mpiexec --hostfile`) as a pure value: one host per line with its
/// `slots=N` (a rank per slot), `#` comments and blank lines ignored, a host named twice counted
/// once with its slots added. Unlike `mpiexec`, mocod needs every host's slot count, so a line
/// without `slots=` is an error rather than "as many as it has cores".
public enum Hostfile {
    public struct Problem: Error, Equatable, CustomStringConvertible {
        public var line: Int
        public var message: String
        public var description: String { "hostfile line \(line): \(message)" }
    }

    public static func parse(_ text: String) throws(Problem) -> [HostSlots] {
        var hosts: [HostSlots] = []
        for (i, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let words = line.split(whereSeparator: \.isWhitespace)
            guard let name = words.first else { continue }
            var slots: Int?
            for word in words.dropFirst() {
                let kv = word.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { throw Problem(line: i + 1, message: "\"\(word)\" is not key=value") }
                switch kv[0] {
                case "slots":
                    guard let n = Int(kv[1]), n >= 1, n <= 4096 else { throw Problem(line: i + 1, message: "slots must be a whole number from 1 to 4096") }
                    slots = n
                case "max_slots", "max-slots":
                    guard Int(kv[1]) != nil else { throw Problem(line: i + 1, message: "max_slots must be a whole number") }
                default:
                    throw Problem(line: i + 1, message: "unknown key \"\(kv[0])\" (slots and max_slots are known)")
                }
            }
            guard let slots else {
                throw Problem(line: i + 1, message: "\(name) has no slots=N (mocod places ranks by slot counts)")
            }
            // (mpiexec's --host takes host:slots, so a name holds no colon: no IPv6 literals.)
            guard name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }) else {
                throw Problem(line: i + 1, message: "\"\(name)\" is not a host name or address")
            }
            if let k = hosts.firstIndex(where: { $0.host == name }) { hosts[k].slots += slots }
            else { hosts.append(HostSlots(host: String(name), slots: slots)) }
        }
        guard !hosts.isEmpty else { throw Problem(line: 0, message: "names no host") }
        return hosts
    }
}

/// The MPI slots of the daemon's hosts and which are taken, as a pure value (like `CorePool`):
/// a distributed job starts only when as many slots as it has ranks are free, one of them on the
/// hostfile's first host (rank 0 runs there: it reads and writes the job's directory, which is
/// the daemon's), the rest taken host by host in the hostfile's order.
public struct SlotPool: Sendable, Equatable {
    /// Every host with all its slots, in the hostfile's order.
    public let hosts: [HostSlots]
    /// Free slots per host, in the same order.
    public private(set) var free: [Int]

    public init(hosts: [HostSlots]) {
        self.hosts = hosts
        free = hosts.map(\.slots)
    }

    public var total: Int { hosts.reduce(0) { $0 + $1.slots } }
    public var freeCount: Int { free.reduce(0, +) }

    /// `n` free slots, now taken, the first host's first (rank 0's) and then host by host in
    /// order; nil (nothing taken) when the first host has none free, fewer are free in all, or
    /// `n` is not positive.
    public mutating func take(_ n: Int) -> [HostSlots]? {
        guard n >= 1, n <= freeCount, free.first ?? 0 >= 1 else { return nil }
        var left = n
        var placement: [HostSlots] = []
        for i in hosts.indices where left > 0 && free[i] > 0 {
            let k = min(free[i], left)
            free[i] -= k
            left -= k
            placement.append(HostSlots(host: hosts[i].host, slots: k))
        }
        return placement
    }

    /// Gives slots back (hosts not in the pool are ignored; no host goes above its slots).
    public mutating func give(_ placement: [HostSlots]) {
        for p in placement {
            guard let i = hosts.firstIndex(where: { $0.host == p.host }) else { continue }
            free[i] = min(hosts[i].slots, free[i] + p.slots)
        }
    }
}
