import Testing
import KVTCNumerics
@testable import KVTCCodec

@Suite struct QuantizerTests {
    @Test(arguments: [2, 3, 4, 6, 8])
    func groupsRoundTripWithinHalfAStep(bits: Int) throws {
        var rng = SplitMix64(seed: UInt64(bits))
        let x = (0..<37).map { _ in Float.random(in: -3...5, using: &rng) }
        let q = GroupQuantizer.quantize(x, bits: bits)
        #expect(q.codes.allSatisfy { Int($0) < 1 << bits })
        let back = try #require(GroupQuantizer.dequantize(q))
        let scale = Float(Float16(bitPattern: q.scale))
        for (a, b) in zip(x, back) { #expect(abs(a - b) <= scale / 2 * 1.001) }
        // The array form quantizes exactly as the codec's pointer form does.
        let p = GroupQuantizer.parameters(lo: x.min()!, hi: x.max()!, maxCode: (1 << bits) - 1)
        #expect(p.shift == q.shift && p.scale == q.scale)
    }

    @Test func tiesRoundToEvenAndConstantGroupsGiveZeroCodes() throws {
        // Span 0...3 with 2 bits: scale 1, so 0.5 and 2.5 are ties.
        let q = GroupQuantizer.quantize([0, 0.5, 2.5, 3], bits: 2)
        #expect(q.codes == [0, 0, 2, 3])
        let c = GroupQuantizer.quantize([1.5, 1.5, 1.5], bits: 4)
        #expect(c.codes == [0, 0, 0] && GroupQuantizer.dequantize(c) == [1.5, 1.5, 1.5])
        #expect(GroupQuantizer.dequantize(.init(codes: [1], shift: Float16.infinity.bitPattern, scale: 0)) == nil)
        #expect(GroupQuantizer.dequantize(.init(codes: [1], shift: 0, scale: Float16(-1).bitPattern)) == nil)
    }

    @Test(arguments: [2, 3, 4, 6, 8])
    func packingIsLSBFirstAndRoundTrips(bits: Int) {
        var rng = SplitMix64(seed: 7)
        let codes = (0..<29).map { _ in UInt8.random(in: 0...UInt8((1 << bits) - 1), using: &rng) }
        let packed = CodePacker.pack(codes, bits: bits)
        #expect(packed.count == CodePacker.byteCount(codes: codes.count, bits: bits))
        #expect(CodePacker.unpack(packed[...], count: codes.count, bits: bits) == codes)
        #expect(CodePacker.pack([1, 2, 3, 0], bits: 2) == [0b00_11_10_01])
        // 3-bit codes straddle bytes: 7, 0, 5 -> bits 111 000 101, LSB first.
        #expect(CodePacker.pack([7, 0, 5], bits: 3) == [0b01_000_111, 0b1])
        #expect(CodePacker.pack([63, 1], bits: 6) == [0b01_111111, 0b0000])
    }

    @Test func exactRowsUseFP16OnlyWhenLossless() {
        let halves: [Float] = [1, -2.5, Float(Float16(0.1)), 65504]
        #expect(ExactRowEncoding.lossless([halves[...]]) == .fp16)
        #expect(ExactRowEncoding.lossless([halves[...], [0.1][...]]) == .fp32)
        for encoding in ExactRowEncoding.allCases {
            let bytes = encoding.encode(halves[...])
            #expect(bytes.count == encoding.byteCount(values: halves.count))
            #expect(encoding.decode(bytes[...]) == halves)
        }
        #expect(ExactRowEncoding.fp16.encode([1][...]) == [0x00, 0x3C])
        #expect(ExactRowEncoding.fp32.encode([1][...]) == [0x00, 0x00, 0x80, 0x3F])
    }

    @Test func ratiosHaveOneFormat() {
        #expect(Profile.formatRatio(16) == "16x")
        #expect(Profile.formatRatio(6.25) == "6.25x")
        #expect(Profile.formatRatio(18.4512, fractionDigits: 2) == "18.45x")
    }
}
