import Testing
@testable import KVTCGGUF

/// Hand-built ggml blocks with hand-computed values.
@Suite struct DequantizeTests {
    func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }

    func decode(_ bytes: [UInt8], _ type: GGMLType, count: Int? = nil) -> [Float] {
        bytes.withUnsafeBytes { Dequantize.floats($0, type: type, count: count ?? type.blockSize) }
    }

    @Test func scalarTypes() {
        let f32: [UInt8] = [0x00, 0x00, 0xC0, 0x3F] // 1.5
        #expect(decode(f32, .f32) == [1.5])
        #expect(decode(le16(0x3C00) + le16(0xC000), .f16, count: 2) == [1.0, -2.0])
        #expect(decode(le16(0x3F80) + le16(0xC040), .bf16, count: 2) == [1.0, -3.0])
    }

    @Test func q4_0() {
        // d = 0.5; byte j holds j (low nibble, element j) and 15 - j (high, element j + 16).
        let bytes = le16(0x3800) + (0..<16).map { UInt8($0) | UInt8(15 - $0) << 4 }
        let y = decode(bytes, .q4_0)
        #expect(y[0] == -4.0)   // (0 - 8) * 0.5
        #expect(y[15] == 3.5)   // (15 - 8) * 0.5
        #expect(y[16] == 3.5)   // (15 - 8) * 0.5
        #expect(y[31] == -4.0)  // (0 - 8) * 0.5
        #expect(y[9] == 0.5)
    }

    @Test func q4_1() {
        // d = 0.25, m = -1; low nibble j, high nibble 3.
        let bytes = le16(0x3400) + le16(0xBC00) + (0..<16).map { UInt8($0) | 3 << 4 }
        let y = decode(bytes, .q4_1)
        #expect(y[0] == -1.0)
        #expect(y[4] == 0.0)
        #expect(y[15] == 2.75)
        #expect(y[16] == -0.25)
        #expect(y[31] == -0.25)
    }

    @Test func q5_0() {
        // d = 1; qh has bit 0 (element 0) and bit 17 (element 17); qs[0] = 0x21.
        let qh: UInt32 = 1 | 1 << 17
        let bytes = le16(0x3C00) + [UInt8(qh & 0xFF), UInt8(qh >> 8 & 0xFF), UInt8(qh >> 16 & 0xFF), UInt8(qh >> 24)]
            + [0x21] + [UInt8](repeating: 0, count: 15)
        let y = decode(bytes, .q5_0)
        #expect(y[0] == 1)     // (1 | 16) - 16
        #expect(y[1] == -16)   // 0 - 16
        #expect(y[16] == -14)  // 2 - 16
        #expect(y[17] == 0)    // (0 | 16) - 16
    }

    @Test func q5_1() {
        // d = 0.5, m = 1; qh bit 1 set; qs[1] = 0x03.
        let bytes = le16(0x3800) + le16(0x3C00) + [2, 0, 0, 0] + [0, 0x03] + [UInt8](repeating: 0, count: 14)
        let y = decode(bytes, .q5_1)
        #expect(y[0] == 1)            // 0 * 0.5 + 1
        #expect(y[1] == 10.5)         // (3 | 16) * 0.5 + 1
        #expect(y[17] == 1)
    }

    @Test func q8_0() {
        // d = 2, qs = -16 ... 15.
        let bytes = le16(0x4000) + (0..<32).map { UInt8(bitPattern: Int8($0 - 16)) }
        let y = decode(bytes, .q8_0)
        #expect(y == (0..<32).map { Float(2 * ($0 - 16)) })
    }

    @Test func q4_K() {
        // d = 1, dmin = 0.5. Six-bit scales/mins per sub-block:
        // sc = [1, 2, 3, 4, 1 | (1 << 4), 3, 5, 7], m = [5, 6, 7, 8, 2 | (2 << 4), 4, 6, 8]
        // (bytes 0 and 4 carry the high bits of sub-block 4's scale and min).
        let scales: [UInt8] = [1 | 0x40, 2, 3, 4, 5 | 0x80, 6, 7, 8, 0x21, 0x43, 0x65, 0x87]
        let bytes = le16(0x3C00) + le16(0x3800) + scales + [UInt8](repeating: 0x53, count: 128)
        let y = decode(bytes, .q4_K)
        // Low nibble 3 for even sub-blocks, high nibble 5 for odd ones: y = d*sc*q - dmin*m.
        let expected: [Float] = [0.5, 7, 5.5, 16, 34, 13, 12, 31]
        for s in 0..<8 {
            #expect(y[32 * s] == expected[s])
            #expect(y[32 * s + 31] == expected[s])
        }
    }

    @Test func q6_K() {
        // ql = 0x21 (low 1, high 2), qh = 0xE4 (2-bit fields 0, 1, 2, 3), scales 1...16 with
        // scales[2] = -3, d = 0.5.
        var scales = (1...16).map { UInt8($0) }
        scales[2] = UInt8(bitPattern: -3)
        let bytes = [UInt8](repeating: 0x21, count: 128) + [UInt8](repeating: 0xE4, count: 64) + scales + le16(0x3800)
        #expect(bytes.count == 210)
        let y = decode(bytes, .q6_K)
        // q1 = 1 - 32 = -31, q2 = 17 - 32 = -15, q3 = 34 - 32 = 2, q4 = 50 - 32 = 18.
        #expect(y[0] == -15.5)    // 0.5 * 1 * -31
        #expect(y[16] == -31)     // 0.5 * 2 * -31
        #expect(y[32] == 22.5)    // 0.5 * -3 * -15
        #expect(y[48] == -30)     // 0.5 * 4 * -15
        #expect(y[64] == 5)       // 0.5 * 5 * 2
        #expect(y[96] == 63)      // 0.5 * 7 * 18
        #expect(y[128] == -139.5) // 0.5 * 9 * -31
        #expect(y[255] == 144)    // 0.5 * 16 * 18
    }

    @Test func manyBlocksInParallel() {
        // 10000 Q8_0 blocks: each block b has d = 1 and every value b % 100 - 50.
        var bytes: [UInt8] = []
        for b in 0..<10000 { bytes += le16(0x3C00) + [UInt8](repeating: UInt8(bitPattern: Int8(b % 100 - 50)), count: 32) }
        let y = decode(bytes, .q8_0, count: 320000)
        #expect(y[0] == -50)
        #expect(y[32 * 9999 + 5] == Float(9999 % 100 - 50))
    }
}
