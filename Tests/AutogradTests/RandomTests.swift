import Autograd
import Testing

@Suite struct RandomTests {
    /// Pins `fisherYatesShuffle` to the orders (and generator consumption) of the loops it
    /// replaced in the loader, ColorJitter, shuffle BN and the linear probe: a change here
    /// changes every seeded data order and invalidates mid-epoch resumes.
    @Test(arguments: [
        (UInt64(42), [7, 3, 8, 9, 5, 6, 4, 1, 0, 2], UInt64(10_760_895_422_300_929_085)),
        (7, [1, 0, 3, 2], 18_098_058_644_649_177_664),
        (2024, [0, 8, 11, 10, 1, 6, 4, 5, 7, 2, 13, 12, 15, 9, 3, 14], 3_503_152_987_054_942_469),
        (0, [0], 11_091_344_671_253_066_420),
        (0, [], 11_091_344_671_253_066_420),
    ])
    func fisherYatesShuffleIsPinned(seed: UInt64, expected: [Int], nextDraw: UInt64) {
        var rng = SeededGenerator(seed: seed)
        var a = Array(0..<expected.count)
        a.fisherYatesShuffle(using: &rng)
        #expect(a == expected)
        #expect(rng.next() == nextDraw)   // count - 1 draws, no more
    }

    /// Works on any random-access mutable collection, with its own indices.
    @Test func fisherYatesShuffleOnASlice() {
        var whole = Array(100..<116)
        var rng = SeededGenerator(seed: 2024)
        whole[3..<13].fisherYatesShuffle(using: &rng)
        var reference = Array(100..<110)
        var rng2 = SeededGenerator(seed: 2024)
        reference.fisherYatesShuffle(using: &rng2)
        #expect(Array(whole[3..<13]) == reference.map { $0 + 3 })
        #expect(Array(whole[0..<3]) == [100, 101, 102] && Array(whole[13...]) == [113, 114, 115])
    }
}
