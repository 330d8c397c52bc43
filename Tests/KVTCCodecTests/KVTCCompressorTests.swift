import Testing
import KVTCCache
import KVTCNumerics
@testable import KVTCCodec

@Suite struct KVTCCompressorTests {
    static let profile = Fixtures.profile()

    /// Whether two blobs hold the same decoded coefficients, exact rows and positions, bit
    /// for bit (no arithmetic is involved in getting them).
    static func sameContents(_ a: [UInt8], _ b: [UInt8], compressor: KVTCCompressor) throws -> Bool {
        let x = try LayerwiseDecoder(a, compressor: compressor), y = try LayerwiseDecoder(b, compressor: compressor)
        return x.keyCoefficients == y.keyCoefficients && x.valueCoefficients == y.valueCoefficients
            && x.protectedKeys == y.protectedKeys && x.protectedValues == y.protectedValues && x.positions == y.positions
    }

    /// Whether two reconstructions agree to float32 rounding (1e-5 of the largest magnitude):
    /// the reconstruction is an sgemm whose summation order follows OpenBLAS's thread count,
    /// which a forward pass running in another suite of the same process switches.
    static func sameToRounding(_ a: KVCache, _ b: KVCache) -> Bool {
        guard a.positions == b.positions, a.keys.count == b.keys.count, a.values.count == b.values.count else { return false }
        let scale = max(b.keys.map(abs).max() ?? 0, b.values.map(abs).max() ?? 0, 1e-30)
        return zip(a.keys, b.keys).allSatisfy { abs($0 - $1) <= 1e-5 * scale }
            && zip(a.values, b.values).allSatisfy { abs($0 - $1) <= 1e-5 * scale }
    }

    @Test func roundTripKeepsProtectedTokensExactAndErrorSmall() throws {
        let cache = Fixtures.cache(tokens: 600, seed: 7)
        for ratio in [4.0, 8, 16] {
            let c = try KVTCCompressor(profile: Self.profile, ratio: ratio)
            let blob = try c.compress(cache)
            let restored = try c.decompress(blob.bytes)
            #expect(restored.positions == cache.positions)
            #expect(restored.geometry == cache.geometry)
            let p = cache.geometry.featuresPerToken
            // Sinks and the recent window are bit-exact.
            for t in Array(0..<4) + Array(472..<600) {
                #expect(Array(restored.keys[(t * p)..<((t + 1) * p)]) == Array(cache.keys[(t * p)..<((t + 1) * p)]))
                #expect(Array(restored.values[(t * p)..<((t + 1) * p)]) == Array(cache.values[(t * p)..<((t + 1) * p)]))
            }
            // The compressed middle: error close to what calibration predicted.
            let mid = 4..<472
            let rk = Fixtures.relativeError(Array(restored.keys[(mid.lowerBound * p)..<(mid.upperBound * p)]),
                                            Array(cache.keys[(mid.lowerBound * p)..<(mid.upperBound * p)]))
            let rv = Fixtures.relativeError(Array(restored.values[(mid.lowerBound * p)..<(mid.upperBound * p)]),
                                            Array(cache.values[(mid.lowerBound * p)..<(mid.upperBound * p)]))
            #expect(rk < 0.1, "keys at \(ratio)x: \(rk)")
            #expect(rv < 0.2, "values at \(ratio)x: \(rv)")
            // Accounting: every byte is counted; the entropy coder helps; nominal is met.
            let r = blob.report
            #expect(r.totalBytes == blob.bytes.count)
            #expect(r.compressedTokens == 468)
            #expect(r.ratioBeforeEntropy >= ratio * 0.8, "before entropy \(r.ratioBeforeEntropy) at \(ratio)")
            #expect(r.ratio >= r.ratioBeforeEntropy)
            #expect(r.wholeCacheRatio < r.ratio)
        }
    }

    @Test func higherRatiosGiveSmallerBlobsAndLargerErrors() throws {
        let cache = Fixtures.cache(tokens: 500, seed: 8)
        var lastSize = Int.max, lastError = 0.0
        for ratio in [4.0, 8, 16] {
            let c = try KVTCCompressor(profile: Self.profile, ratio: ratio)
            let blob = try c.compress(cache)
            let restored = try c.decompress(blob.bytes)
            let e = Fixtures.relativeError(restored.values, cache.values)
            #expect(blob.bytes.count < lastSize)
            #expect(e >= lastError)
            lastSize = blob.bytes.count
            lastError = e
        }
    }

    @Test func decodingIntoACacheMatchesDecodingAlone() throws {
        // Consecutive pieces of one sequence, as a store keeps them: the first holds the
        // sinks, none keeps recent tokens exact.
        let whole = Fixtures.cache(tokens: 4 * 96, seed: 10)
        let c = try KVTCCompressor(profile: Self.profile, ratio: 8,
                                   protection: Protection(sinkTokens: Self.profile.protection.sinkTokens, recentTokens: 0))
        let pieces = try (0..<4).map { i in try c.compress(whole.tokens((i * 96)..<((i + 1) * 96))).bytes }
        var expected = try c.decompress(pieces[0])
        for piece in pieces.dropFirst() { try expected.append(contentsOf: try c.decompress(piece)) }

        var one = KVCache(geometry: whole.geometry, rope: whole.rope)
        for piece in pieces { try c.decompress(piece, appendingTo: &one) }
        var batched = KVCache(geometry: whole.geometry, rope: whole.rope)
        try c.decompress(sequence: pieces, appendingTo: &batched)
        for got in [one, batched] {
            #expect(got.positions == expected.positions)
            #expect(Fixtures.relativeError(got.keys, expected.keys) < 1e-6)
            #expect(Fixtures.relativeError(got.values, expected.values) < 1e-6)
        }
        // Sinks are bit-exact; the batched decode only differs from piecewise by GEMM rounding.
        let p = whole.geometry.featuresPerToken
        #expect(Array(batched.keys[0..<(4 * p)]) == Array(whole.keys[0..<(4 * p)]))

        // A bad piece is named and leaves the cache as it was.
        var corrupt = pieces
        corrupt[2][corrupt[2].count - 10] ^= 0x5A
        var target = KVCache(geometry: whole.geometry, rope: whole.rope)
        do {
            try c.decompress(sequence: corrupt, appendingTo: &target)
            Issue.record("a corrupt piece was decoded")
        } catch {
            #expect(error.index == 2)
        }
        #expect(target.tokenCount == 0)
        // A cache of another geometry is refused.
        var other = KVCache(geometry: KVGeometry(layers: 1, kvHeads: 1, headDim: 8), rope: .none(headDim: 8))
        #expect(throws: KVTCError.self) { try c.decompress(pieces[0], appendingTo: &other) }
        #expect(other.tokenCount == 0)
    }

    @Test func layerwiseDecodingMatchesFullDecoding() throws {
        let cache = Fixtures.cache(tokens: 300, seed: 9, firstPosition: 50)
        let c = try KVTCCompressor(profile: Self.profile, ratio: 8)
        let blob = try c.compress(cache)
        let full = try c.decompress(blob.bytes)
        let decoder = try LayerwiseDecoder(blob.bytes, compressor: c)
        let g = cache.geometry
        for l in 0..<g.layers {
            let (k, v) = decoder.layer(l)
            for t in 0..<cache.tokenCount {
                for i in 0..<g.featuresPerLayer {
                    let idx = t * g.featuresPerToken + l * g.featuresPerLayer + i
                    #expect(abs(k[t * g.featuresPerLayer + i] - full.keys[idx]) <= 1e-4 * max(1, abs(full.keys[idx])))
                    #expect(abs(v[t * g.featuresPerLayer + i] - full.values[idx]) <= 1e-4 * max(1, abs(full.values[idx])))
                }
            }
        }
        // A later chunk has no sinks: positions start at 50, so every leading token is compressed.
        #expect(blob.report.compressedTokens == 300 - 128)
    }

    @Test func windowOfZeroAndExplicitPositions() throws {
        var c = try KVTCCompressor(profile: Self.profile, ratio: 16)
        c.protection = Protection(sinkTokens: 4, recentTokens: 0)
        let base = Fixtures.cache(tokens: 100, seed: 10)
        let cache = try KVCache(geometry: base.geometry, rope: base.rope, positions: (0..<100).map { $0 * 2 },
                                keys: base.keys, values: base.values)
        let blob = try c.compress(cache)
        #expect(blob.report.compressedTokens == 98)
        let restored = try c.decompress(blob.bytes)
        #expect(restored.positions == cache.positions)
    }

    @Test func refusesOtherProfileAndBadCaches() throws {
        let other = Fixtures.profile(ratios: [8])
        let c = try KVTCCompressor(profile: Self.profile, ratio: 8)
        let c2 = try KVTCCompressor(profile: other, ratio: 8)
        let cache = Fixtures.cache(tokens: 200, seed: 11)
        let blob = try c.compress(cache)
        #expect(Self.profile.contentHash != other.contentHash)
        #expect { try c2.decompress(blob.bytes) } throws: { e in
            if case KVTCError.blob(.profileMismatch) = e { return true } else { return false }
        }
        // Too few tokens.
        #expect(throws: KVTCError.nothingToCompress(tokens: 100, protected: 100)) { try c.compress(Fixtures.cache(tokens: 100, seed: 1)) }
        // Wrong geometry.
        let wrong = Fixtures.cache(tokens: 200, seed: 2, geometry: KVGeometry(layers: 2, kvHeads: 2, headDim: 16))
        #expect { try c.compress(wrong) } throws: { e in
            if case KVTCError.profile(.mismatch) = e { return true } else { return false }
        }
        // NaN.
        var keys = cache.keys
        keys[1000] = .nan
        let nan = try KVCache(geometry: cache.geometry, rope: cache.rope, positions: cache.positions, keys: keys, values: cache.values)
        #expect { try c.compress(nan) } throws: { e in
            if case KVTCError.cache(.nonFinite) = e { return true } else { return false }
        }
        // Unknown ratio.
        #expect { try KVTCCompressor(profile: Self.profile, ratio: 3) } throws: { e in
            if case KVTCError.profile(.unknownRatio) = e { return true } else { return false }
        }
    }

    /// The lossless stage changes bytes, never values: a Zstandard blob decodes to exactly the
    /// DEFLATE blob's cache. DEFLATE-only blobs stay version 1 (earlier readers read them);
    /// a blob with Zstandard chunks is version 2, and its coder byte is checked.
    @Test func everyLosslessCoderDecodesToTheSameCache() throws {
        let cache = Fixtures.cache(tokens: 600, seed: 7)
        // The paper's component types only, so that nothing but the coder asks for version 2.
        let profile = Fixtures.profile(ratios: [8], recipe: .paper)
        var deflate = try KVTCCompressor(profile: profile, ratio: 8)
        deflate.codeCoding = .packed
        // One quantization: two would differ at rounding boundaries of the projection sgemm
        // when another suite switches OpenBLAS's thread count (see `QuantizedCache`).
        let quantized = try deflate.quantize(cache)
        let reference = deflate.assemble(quantized)
        let decoded = try deflate.decompress(reference.bytes)
        #expect(try Blob.summary(of: reference.bytes).formatVersion == 1)
        #expect(try Blob.summary(of: reference.bytes).coders.contains("deflate"))
        for coder in [LosslessCoder.zstd(level: 1), .zstd(level: 19), .deflate(level: 12)] {
            var c = try KVTCCompressor(profile: profile, ratio: 8, coder: coder)
            c.codeCoding = .packed
            let blob = c.assemble(quantized)
            // Bit for bit where no arithmetic is involved: the decoded coefficients and exact rows.
            #expect(try Self.sameContents(blob.bytes, reference.bytes, compressor: deflate), "\(coder)")
            let restored = try deflate.decompress(blob.bytes)
            #expect(Self.sameToRounding(restored, decoded), "\(coder)")
            // The same sections; a version-2 header holds one more byte (the code coding).
            #expect(abs(blob.report.compressedTokensBytesBeforeEntropy - reference.report.compressedTokensBytesBeforeEntropy) <= 1)
            let summary = try Blob.summary(of: blob.bytes)
            if case .zstd = coder {
                #expect(summary.formatVersion == 2 && summary.coders.contains("zstd"))
            } else {
                #expect(summary.formatVersion == 1)
            }
        }
        #expect(LosslessCoder("zstd-3") == .zstd(level: 3) && LosslessCoder("deflate-13") == nil && LosslessCoder("lz4-1") == nil)
    }

    /// The oneDNN backend (bfloat16 operands, f32 accumulation) decodes to the f32 OpenBLAS
    /// path's cache within 1e-3 relative squared difference, and blobs do not depend on the
    /// backend that made them: each backend decodes the other's.
    @Test func backendsDecodeToTheSameCacheWithinBFloat16Rounding() throws {
        let cache = Fixtures.cache(tokens: 600, seed: 11)
        let f32 = try KVTCCompressor(profile: Self.profile, ratio: 8, backend: .openblas)
        let bf16 = try KVTCCompressor(profile: Self.profile, ratio: 8, backend: .onednn, reconstruction: .bf16)
        func difference(_ a: KVCache, _ b: KVCache) -> Double {
            var num = 0.0, den = 0.0
            for (x, y) in zip(a.keys + a.values, b.keys + b.values) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
            return num / den
        }
        let reference = try f32.decompress(f32.compress(cache).bytes)
        let blob = try bf16.compress(cache).bytes
        let viaBF16 = try bf16.decompress(blob), crossed = try f32.decompress(blob)
        #expect(difference(viaBF16, reference) < 1e-3, "\(difference(viaBF16, reference))")
        #expect(difference(crossed, reference) < 1e-3, "\(difference(crossed, reference))")
        #expect(difference(try bf16.decompress(f32.compress(cache).bytes), reference) < 1e-3)
        // And both are as close to the original as the codec is.
        #expect(abs(difference(viaBF16, cache) - difference(reference, cache)) < 0.1 * difference(reference, cache) + 1e-6)
    }

    /// Reconstruction in 8-bit integers (coefficients per token, basis per feature, exact
    /// sums) decodes within the same 1e-3 relative squared difference of the f32 path as
    /// bfloat16 does: each operand's rounding error is at most half a step of 1/127 of its
    /// row's or column's largest magnitude, below the 2- to 4-bit codes' own steps. Where
    /// oneDNN has no VNNI the compressor keeps bfloat16.
    @Test func integerReconstructionDecodesWithinTheF32PathsTolerance() throws {
        let cache = Fixtures.cache(tokens: 600, seed: 11)
        // Which ratios reconstruct in int8: those whose plans average fewer than 4 bits.
        var ratio: Double?
        for r in [4.0, 8, 16] {
            let c = try KVTCCompressor(profile: Self.profile, ratio: r, backend: .onednn, reconstruction: .int8)
            let expected = (OneDNN.hasInt8Unit && c.plan.keys.meanCodeBits < ReconstructionArithmetic.int8MaximumMeanBits,
                            OneDNN.hasInt8Unit && c.plan.values.meanCodeBits < ReconstructionArithmetic.int8MaximumMeanBits)
            #expect(c.reconstructsInInt8 == expected, "\(r)x")
            #expect(try KVTCCompressor(profile: Self.profile, ratio: r, backend: .onednn, reconstruction: .bf16).reconstructsInInt8 == (false, false))
            #expect(try KVTCCompressor(profile: Self.profile, ratio: r, backend: .openblas, reconstruction: .int8).reconstructsInInt8 == (false, false))
            if ratio == nil, expected.0 || expected.1 { ratio = r }
        }
        guard OneDNN.hasInt8Unit else { return }
        let chosen = try #require(ratio, "some plan of the fixture's profile averages below 4 bits")
        let f32 = try KVTCCompressor(profile: Self.profile, ratio: chosen, backend: .openblas)
        let int8 = try KVTCCompressor(profile: Self.profile, ratio: chosen, backend: .onednn, reconstruction: .int8)
        func difference(_ a: KVCache, _ b: KVCache) -> Double {
            var num = 0.0, den = 0.0
            for (x, y) in zip(a.keys + a.values, b.keys + b.values) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
            return num / den
        }
        let blob = try f32.compress(cache).bytes
        let reference = try f32.decompress(blob), viaInt8 = try int8.decompress(blob)
        #expect(viaInt8.positions == reference.positions)
        // The integer products did run (a failed one would fall back to bfloat16 silently).
        let bf16 = try KVTCCompressor(profile: Self.profile, ratio: chosen, backend: .onednn, reconstruction: .bf16)
        #expect(difference(viaInt8, try bf16.decompress(blob)) > 0)
        #expect(difference(viaInt8, reference) < 1e-3, "\(difference(viaInt8, reference))")
        // Its distance from the original exceeds the f32 path's by less than that too (on this
        // easy synthetic cache the f32 path's error at low ratios is ~1e-5, so the integer
        // rounding is a visible share of it: why plans of 4 bits or more keep bfloat16).
        #expect(difference(viaInt8, cache) - difference(reference, cache) < 1e-3)
        // The exact (protected) tokens are copied, not reconstructed: bit for bit the same.
        let p = cache.geometry.featuresPerToken
        let last = cache.tokenCount - Self.profile.protection.recentTokens
        #expect(Array(viaInt8.values[(last * p)...]) == Array(reference.values[(last * p)...]))
    }

    /// Chunks whose coder byte names no coder, or a coder a version-1 blob cannot hold, are
    /// refused with a typed error rather than decoded.
    @Test func unknownChunkCodersAreRefused() throws {
        let c = try KVTCCompressor(profile: Self.profile, ratio: 8, coder: .zstd(level: 3))
        let blob = try c.compress(Fixtures.cache(tokens: 300, seed: 4)).bytes
        let (_, chunks, _) = try Blob.parseHeader(blob)
        #expect(chunks.contains { $0.coding == 2 })
        func patched(version: UInt32?, coding: UInt8) -> [UInt8] {
            var b = blob
            if let version { for i in 0..<4 { b[8 + i] = UInt8(truncatingIfNeeded: version >> (8 * UInt32(i))) } }
            // Rewrite every zstd chunk's coder byte (kind u8, raw i64, stored i64, coding u8, crc u32).
            let headerLength = Int(b[12]) | Int(b[13]) << 8 | Int(b[14]) << 16 | Int(b[15]) << 24
            let tableEnd = 16 + headerLength
            for (i, chunk) in chunks.enumerated() where chunk.coding == 2 {
                b[tableEnd - (chunks.count - i) * 22 + 17] = coding
            }
            // Fix the header checksum so that only the coder byte is wrong.
            let crc = Deflate.crc32(Array(b[0..<tableEnd]))
            for i in 0..<4 { b[tableEnd + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
            return b
        }
        #expect(try c.decompress(patched(version: nil, coding: 2)).tokenCount == 300)
        #expect { try c.decompress(patched(version: nil, coding: 7)) } throws: { e in
            if case KVTCError.blob(.corrupt(let m)) = e { return m.contains("coder") } else { return false }
        }
        // Relabelled version 1: its header no longer parses (a version-1 header is shorter).
        #expect { try c.decompress(patched(version: 1, coding: 2)) } throws: { e in
            if case KVTCError.blob(.corrupt) = e { return true } else { return false }
        }
    }

    /// Plans with the 3- and 6-bit types (beyond the paper) make version-2 blobs, which
    /// earlier readers would misread as corrupt plans; they decode like any other.
    @Test func plansBeyondThePapersTypesMakeVersionTwoBlobs() throws {
        let plan = try Self.profile.plan(ratio: 8)
        let types = Set((plan.keys.groups + plan.values.groups).map(\.type))
        #expect(!types.isSubset(of: ComponentType.paperTypes), "\(types)")
        let c = try KVTCCompressor(profile: Self.profile, ratio: 8)
        let blob = try c.compress(Fixtures.cache(tokens: 300, seed: 5))
        #expect(try Blob.summary(of: blob.bytes).formatVersion == 2)
        #expect(try c.decompress(blob.bytes).tokenCount == 300)
    }

    /// rANS changes bytes, never values: a blob whose codes are rANS-coded decodes to exactly
    /// the cache of the packed blob, and damage inside an rANS plane is a typed error.
    @Test func ransCodedCodesDecodeToThePackedBlobsCache() throws {
        let cache = Fixtures.cache(tokens: 600, seed: 7)
        var packed = try KVTCCompressor(profile: Self.profile, ratio: 8)
        packed.codeCoding = .packed
        let rans = try KVTCCompressor(profile: Self.profile, ratio: 8)
        #expect(rans.codeCoding == .rans)
        let quantized = try packed.quantize(cache)
        let a = packed.assemble(quantized), b = rans.assemble(quantized)
        #expect(try rans.decompress(rans.compress(cache).bytes).tokenCount == cache.tokenCount)
        #expect(try Blob.summary(of: b.bytes).codeCoding == "rans")
        #expect(try Self.sameContents(a.bytes, b.bytes, compressor: packed))
        let da = try packed.decompress(a.bytes), db = try packed.decompress(b.bytes)
        #expect(Self.sameToRounding(da, db))
        #expect(b.report.compressedTokensBytesBeforeEntropy == a.report.compressedTokensBytesBeforeEntropy)
        // Damage the key code section's first plane without touching the checksums' view of
        // it: re-seal the chunk's CRC so that only the rANS layer can notice.
        let (header, chunks, start) = try Blob.parseHeader(b.bytes)
        #expect(header.codeCoding == .rans)
        var offset = start
        var damaged = b.bytes
        for c in chunks {
            if c.kind == .keyCodes && c.coding == 0 {
                damaged[offset + c.storedLength / 2] ^= 0x5A
                let crc = Deflate.crc32(Array(damaged[offset..<(offset + c.storedLength)]))
                // Rewrite this chunk's CRC in the chunk table and the header checksum.
                let headerLength = Int(damaged[12]) | Int(damaged[13]) << 8 | Int(damaged[14]) << 16 | Int(damaged[15]) << 24
                let tableEnd = 16 + headerLength
                let index = chunks.firstIndex(of: c)!
                let at = tableEnd - (chunks.count - index) * 22 + 18
                for i in 0..<4 { damaged[at + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
                let headerCRC = Deflate.crc32(Array(damaged[0..<tableEnd]))
                for i in 0..<4 { damaged[tableEnd + i] = UInt8(truncatingIfNeeded: headerCRC >> (8 * UInt32(i))) }
                break
            }
            offset += c.storedLength
        }
        #expect(damaged != b.bytes)
        #expect { try rans.decompress(damaged) } throws: { e in
            if case KVTCError.blob(.corrupt(let m)) = e { return m.contains("codes") } else { return false }
        }
    }
}
