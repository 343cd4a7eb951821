/// A seeded, reproducible generator (xoshiro256**), with a state that can be saved and restored.
public struct SeededGenerator: RandomNumberGenerator, Sendable, Equatable {
    public var state: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var sm = seed
        func splitmix() -> UInt64 {
            sm &+= 0x9E37_79B9_7F4A_7C15
            var z = sm
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        state = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    public mutating func next() -> UInt64 {
        let result = rotl(state.1 &* 5, 7) &* 9
        let t = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= t
        state.3 = rotl(state.3, 45)
        return result
    }

    private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    public static func == (a: Self, b: Self) -> Bool {
        a.state.0 == b.state.0 && a.state.1 == b.state.1 && a.state.2 == b.state.2 && a.state.3 == b.state.3
    }
}

extension RandomNumberGenerator {
    /// Uniform in [0, 1) with 53 bits.
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1p-53 }

    /// A standard normal sample (Box–Muller).
    public mutating func nextGaussian() -> Double {
        let u1 = max(nextUnit(), 0x1p-60)
        let u2 = nextUnit()
        return (-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2)
    }
}

extension MutableCollection where Self: RandomAccessCollection {
    /// Shuffles in place with Fisher–Yates (Durstenfeld): for `i` from the last index down to 1,
    /// swap element `i` with element `next() % (i + 1)`. One draw per swap, `count - 1` in all.
    ///
    /// Not the standard library's `shuffle(using:)`: its algorithm and the way it consumes the
    /// generator are not specified and may change between Swift releases, and data orders,
    /// shuffle-BN permutations and checkpoints resumed mid-epoch must stay reproducible.
    /// (`next() % (i + 1)` has a modulo bias of order `i / 2⁶⁴`, negligible here and kept so
    /// existing seeds keep their orders.)
    public mutating func fisherYatesShuffle<G: RandomNumberGenerator>(using rng: inout G) {
        let n = count
        for i in stride(from: n - 1, to: 0, by: -1) {
            let j = Int(rng.next() % UInt64(i + 1))
            swapAt(index(startIndex, offsetBy: i), index(startIndex, offsetBy: j))
        }
    }
}

@inline(__always) func _log(_ x: Double) -> Double {
    #if canImport(Glibc)
    return Glibc.log(x)
    #else
    return Foundation.log(x)
    #endif
}
@inline(__always) func _cos(_ x: Double) -> Double {
    #if canImport(Glibc)
    return Glibc.cos(x)
    #else
    return Foundation.cos(x)
    #endif
}
#if canImport(Glibc)
import Glibc
#endif
