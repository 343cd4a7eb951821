@testable import Data
import Testing

@Suite struct BilinearTests {
    /// The image-folder resize of an 8x6 gray ramp to 7x7 (shorter side 6 → 7, width 8 → 9,
    /// center column offset 1), pinned to the values the reader has always stored. Pixel 6 is
    /// 185 here and would be 186 with the augmentations' order of rounding (`.scaleFirst`).
    @Test func imageFolderResizeIsPinned() {
        var pixels: [UInt8] = []
        for y in 0..<6 { for x in 0..<8 { pixels.append(UInt8((37 * x + 11 * y) % 256)) } }
        let img = Readers.Image(width: 8, height: 6, channels: 1, pixels: pixels)
        let expected: [UInt8] = [
            31, 64, 97, 130, 162, 195, 185, 39, 72, 105, 138, 171, 204, 194, 49, 82, 115, 148, 180, 213, 204,
            58, 91, 124, 157, 190, 223, 213, 68, 101, 134, 166, 199, 207, 146, 77, 110, 143, 176, 209, 171, 19,
            86, 119, 152, 185, 217, 179, 27,
        ]
        #expect(Resize.squareCrop(img, size: 7, channels: 1) == expected)
    }

    /// Half-pixel centers, edges clamped; the two roundings of the coordinate differ in the last bit.
    @Test func axisTaps() {
        let a = Bilinear.Axis(outputs: 7, length: 6, resized: 7, rounding: .scaleFirst).taps
        let b = Bilinear.Axis(outputs: 7, length: 6, resized: 7, rounding: .divideFirst).taps
        #expect(a.map(\.i0) == [0, 0, 1, 2, 3, 4, 5] && a.map(\.i1) == [1, 1, 2, 3, 4, 5, 5])
        #expect(b.map(\.i0) == a.map(\.i0) && b.map(\.i1) == a.map(\.i1))
        #expect(a[0].weight == 0 && a[3].weight == 0.5)   // output 0 sits left of the first center; output 3 halfway
        #expect(a[4].weight == 0.35714285714285676 && b[4].weight == 0.35714285714285765)
        #expect(zip(a, b).filter { $0.weight != $1.weight }.count == 1)
        // A crop: the taps are offset by the start and stay inside the box.
        let crop = Bilinear.Axis(outputs: 4, start: 10, length: 2, resized: 4, rounding: .scaleFirst).taps
        #expect(crop.map(\.i0) == [10, 10, 10, 11] && crop.map(\.i1) == [11, 11, 11, 11])
        #expect(crop.map(\.weight) == [0, 0.25, 0.75, 0.25])
    }
}
