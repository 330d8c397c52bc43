import Foundation
import Testing
@testable import KVTCNumerics

@Suite struct RANSTests {
    static func skewed(count: Int, alphabet: Int, seed: UInt64) -> [UInt8] {
        var rng = SplitMix64(seed: seed)
        // Roughly Gaussian codes centred in the alphabet, like min-max quantized coefficients.
        return (0..<count).map { _ in
            let g = (0..<4).reduce(0.0) { a, _ in a + Double.random(in: -1...1, using: &rng) } / 4
            return UInt8(max(0, min(alphabet - 1, Int((Double(alphabet) / 2 + g * Double(alphabet) / 2).rounded(.down)))))
        }
    }

    static func entropyBytes(_ s: [UInt8]) -> Double {
        var c = [Int](repeating: 0, count: 256)
        for x in s { c[Int(x)] += 1 }
        return c.filter { $0 > 0 }.reduce(0.0) { $0 - Double($1) * log2(Double($1) / Double(s.count)) } / 8
    }

    @Test(arguments: [2, 8, 16, 64, 256], [1, 4])
    func roundTripsNearTheOrderZeroEntropy(alphabet: Int, lanes: Int) throws {
        // A count that is not a multiple of the lanes.
        let symbols = Self.skewed(count: 50_003, alphabet: alphabet, seed: UInt64(alphabet))
        let model = symbols.withUnsafeBufferPointer { RANSModel(counting: $0, alphabet: alphabet) }
        #expect(model.frequencies.reduce(0, +) == 1 << RANSModel.scaleBits)
        let coded = symbols.withUnsafeBufferPointer { RANS.encode($0, model: model, lanes: lanes) }
        var back = [UInt8](repeating: 0, count: symbols.count)
        try coded.withUnsafeBytes { c in
            try back.withUnsafeMutableBufferPointer { try RANS.decode(c, count: symbols.count, model: model, lanes: lanes, into: $0.baseAddress!) }
        }
        #expect(back == symbols)
        // Within 1% (plus the 4-byte states) of the entropy: frequencies are 14-bit.
        #expect(Double(coded.count) <= Self.entropyBytes(symbols) * 1.01 + Double(8 * lanes), "\(coded.count) vs \(Self.entropyBytes(symbols))")
        // A stream read with the other lane count is refused, not misread.
        let other = lanes == 1 ? 4 : 1
        let misread = coded.withUnsafeBytes { c in
            back.withUnsafeMutableBufferPointer { (try? RANS.decode(c, count: symbols.count, model: model, lanes: other, into: $0.baseAddress!)) != nil }
        }
        #expect(!misread)
        // The table survives its serialization.
        var w = ByteWriter()
        model.write(to: &w)
        var r = ByteReader(w.bytes)
        #expect(try RANSModel.read(from: &r, alphabet: alphabet) == model)
    }

    @Test(arguments: [1, 4])
    func degenerateInputs(lanes: Int) throws {
        for symbols in [[UInt8](), [UInt8](repeating: 5, count: 1000), [0, 1], [3], [1, 2, 7], [0, 7, 7, 1, 2]] {
            let model = symbols.withUnsafeBufferPointer { RANSModel(counting: $0, alphabet: 8) }
            let coded = symbols.withUnsafeBufferPointer { RANS.encode($0, model: model, lanes: lanes) }
            var back = [UInt8](repeating: 0, count: symbols.count)
            try coded.withUnsafeBytes { c in
                try back.withUnsafeMutableBufferPointer { try RANS.decode(c, count: symbols.count, model: model, lanes: lanes, into: $0.baseAddress!) }
            }
            #expect(back == symbols)
        }
    }

    /// A stream that is cut, extended, altered or decoded for the wrong count fails with a
    /// typed error instead of producing symbols (the final state and length are checked).
    @Test(arguments: [1, 4])
    func damagedStreamsAreRefused(lanes: Int) throws {
        let symbols = Self.skewed(count: 4000, alphabet: 8, seed: 9)
        let model = symbols.withUnsafeBufferPointer { RANSModel(counting: $0, alphabet: 8) }
        let coded = symbols.withUnsafeBufferPointer { RANS.encode($0, model: model, lanes: lanes) }
        var out = [UInt8](repeating: 0, count: 5000)
        func decode(_ bytes: [UInt8], _ count: Int) -> Bool {
            bytes.withUnsafeBytes { c in
                out.withUnsafeMutableBufferPointer { (try? RANS.decode(c, count: count, model: model, lanes: lanes, into: $0.baseAddress!)) != nil }
            }
        }
        #expect(decode(coded, 4000))
        #expect(!decode(Array(coded.dropLast()), 4000))
        #expect(!decode(coded + [0], 4000))
        #expect(!decode(coded, 3999))
        #expect(!decode(Array(coded.prefix(4 * lanes - 1)), 0))
        // States no encoder ends in (below 2^23 or from 2^31) are refused before decoding,
        // whatever follows them.
        #expect(!decode([UInt8](repeating: 0, count: 4 * lanes + 8), 4))
        #expect(!decode([UInt8](repeating: 0xFF, count: 4 * lanes + 8), 4))
        #expect(!decode(coded, 3996))
        var flipped = coded
        flipped[coded.count / 2] ^= 0x10
        #expect(!decode(flipped, 4000))
        // Tables that do not sum to the scale, or whose varints run past it, are refused.
        var w = ByteWriter()
        for _ in 0..<8 { w.varint(100) }
        var r = ByteReader(w.bytes)
        #expect(throws: RANSError.badModel) { try RANSModel.read(from: &r, alphabet: 8) }
    }

    @Test func varintsRoundTripAndRejectPadding() throws {
        var w = ByteWriter()
        for v in [0, 1, 127, 128, 16383, 16384, 1 << 40] { w.varint(v) }
        var r = ByteReader(w.bytes)
        for v in [0, 1, 127, 128, 16383, 16384, 1 << 40] { #expect(try r.varint(max: 1 << 41) == v) }
        var padded = ByteReader([0x80, 0x00])
        #expect(throws: ByteReaderOutOfBounds.self) { try padded.varint(max: 10) }
        var big = ByteReader([0xFF, 0x01])
        #expect(throws: ByteReaderOutOfBounds.self) { try big.varint(max: 100) }
    }
}
