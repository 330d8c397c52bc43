import Testing
@testable import KVTCNumerics

@Suite struct NumericsTests {
    @Test func splitMix64GivesTheReferenceSequence() {
        var a = SplitMix64(seed: 0), b = SplitMix64(seed: 0)
        #expect(a.next() == 0xE220_A839_7B1D_CDAF)
        _ = b.next()
        #expect((0..<100).map { _ in a.next() } == (0..<100).map { _ in b.next() })
    }

    @Test func gemmMatchesTheDefinitionWithTransposesAndStrides() {
        // A is 2x3, B^T given as 2x3 (so B is 3x2); C = A * B.
        let a: [Float] = [1, 2, 3, 4, 5, 6]
        let bt: [Float] = [1, 0, -1, 2, 1, 0]
        var c = [Float](repeating: 0, count: 4)
        a.withUnsafeBufferPointer { ap in bt.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
            BLAS.gemm(.normal, .transposed, m: 2, n: 2, k: 3, a: ap.baseAddress!, lda: 3, b: bp.baseAddress!, ldb: 3,
                      c: cp.baseAddress!, ldc: 2)
        } } }
        let expected: [Float] = [-2, 4, -2, 13]
        #expect(c == expected)
        let m = Matrix(rows: 2, columns: 3, elements: a).multiplied(by: Matrix(rows: 2, columns: 3, elements: bt).transposed)
        #expect(m.elements == c)
    }

    @Test func symmetricEigenFindsKnownSpectrumLargestFirst() throws {
        // [[2,1],[1,2]] has eigenvalues 3 (1,1)/sqrt2 and 1 (1,-1)/sqrt2.
        let e = try SymmetricEigen(symmetricUpper: [2, 1, 1, 2], dimension: 2)
        #expect(abs(e.values[0] - 3) < 1e-12 && abs(e.values[1] - 1) < 1e-12)
        #expect(abs(abs(e.vectors[0]) - 0.5.squareRoot()) < 1e-12 && abs(e.vectors[0] - e.vectors[1]) < 1e-12)
        let top = try SymmetricEigen(symmetricUpper: [2, 1, 1, 2], dimension: 2, count: 1)
        #expect(top.values.count == 1 && abs(top.values[0] - 3) < 1e-12)
        #expect(throws: FactorizationError.nonFinite) { try SymmetricEigen(symmetricUpper: [.nan, 0, 0, 1], dimension: 2) }
    }

    @Test func deflateRoundTripsAndRejectsCorruptStreams() throws {
        let data = (0..<10000).map { UInt8(truncatingIfNeeded: $0 * 7 % 13) }
        let packed = try Deflate.compress(data, level: 6)
        #expect(packed.count < data.count / 4)
        #expect(try Deflate.decompress(packed, count: data.count) == data)
        #expect(throws: DeflateError.corruptStream) { try Deflate.decompress(packed, count: data.count + 1) }
        #expect(throws: DeflateError.corruptStream) { try Deflate.decompress(Array(packed.prefix(packed.count / 2)), count: data.count) }
        // CRC-32 of "123456789" is the standard check value.
        #expect(Deflate.crc32(Array("123456789".utf8)) == 0xCBF4_3926)
    }

    @Test func halfPrecisionConversionsRoundToNearestEven() {
        #expect(HalfPrecision.f16Bits(1) == 0x3C00)
        #expect(HalfPrecision.float(f16Bits: 0x7BFF) == 65504)
        #expect(HalfPrecision.bf16Bits(1) == 0x3F80)
        // 1 + 2^-8 is halfway between two bf16 values; ties go to even (1.0).
        #expect(HalfPrecision.bf16Bits(1 + 1.0 / 256) == 0x3F80)
        #expect(HalfPrecision.float(bf16Bits: 0x4049) == 3.140625)
        #expect(HalfPrecision.float(bf16Bits: HalfPrecision.bf16Bits(.nan)).isNaN)
    }

    @Test func bulkHalfConversionIsExactForEveryBitPattern() {
        // Every binary16 value, at an odd byte offset, plus a ragged tail.
        let count = 65536 + 5
        var bytes = [UInt8](repeating: 0, count: 1 + 2 * count)
        for i in 0..<count {
            let bits = UInt16(truncatingIfNeeded: i)
            bytes[1 + 2 * i] = UInt8(bits & 0xFF)
            bytes[2 + 2 * i] = UInt8(bits >> 8)
        }
        var out = [Float](repeating: 0, count: count)
        bytes.withUnsafeBytes { raw in
            out.withUnsafeMutableBufferPointer { HalfPrecision.convertF16ToFloat(littleEndian: raw.baseAddress! + 1, $0.baseAddress!, count: count) }
        }
        var mismatches = 0
        for i in 0..<count {
            let expected = Float(Float16(bitPattern: UInt16(truncatingIfNeeded: i)))
            if expected.isNaN ? !out[i].isNaN : out[i].bitPattern != expected.bitPattern { mismatches += 1 }
        }
        #expect(mismatches == 0)
    }

    @Test func byteReaderRefusesReadsPastTheEnd() throws {
        var w = ByteWriter()
        w.u32(7); w.string("kv"); w.f64(2.5)
        var r = ByteReader(w.bytes)
        #expect(try r.u32() == 7)
        #expect(try r.string() == "kv")
        #expect(try r.f64() == 2.5)
        try r.finish()
        #expect(throws: ByteReaderOutOfBounds.self) { try r.u8() }
        #expect(hexString([0, 15, 255]) == "000fff")
    }

    @Test func parallelLoopsCoverEveryIndexOnce() {
        let counts = Locked([Int](repeating: 0, count: 1000))
        Parallel.forEachRange(1000, minimumPerTask: 10) { r in counts.withLock { for i in r { $0[i] += 1 } } }
        #expect(counts.current.allSatisfy { $0 == 1 })
    }
}

@Suite struct OpenBLASCoreTests {
    /// Only a generic fallback is corrected, to the best family the CPU's flags allow.
    @Test func aGenericFallbackIsReplacedByWhatTheCPUCanRun() {
        let avx512: Set<String> = ["avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"]
        #expect(BLAS.betterCoreType(chosen: "Prescott", cpuFlags: avx512) == "SkylakeX")
        #expect(BLAS.betterCoreType(chosen: "Prescott", cpuFlags: avx512.union(["avx512_bf16"])) == "Cooperlake")
        #expect(BLAS.betterCoreType(chosen: "Prescott", cpuFlags: ["avx2", "fma"]) == "Haswell")
        #expect(BLAS.betterCoreType(chosen: "Prescott", cpuFlags: ["sse3"]) == nil)
        #expect(BLAS.betterCoreType(chosen: "SkylakeX", cpuFlags: avx512) == nil)
        #expect(BLAS.betterCoreType(chosen: "Haswell", cpuFlags: avx512) == nil)
        #expect(!BLAS.coreName.isEmpty)
    }
}
