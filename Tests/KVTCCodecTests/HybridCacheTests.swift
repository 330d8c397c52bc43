import Foundation
import KVTCCache
import KVTCTestSupport
import Testing
@testable import KVTCCodec

/// Caches of hybrid models (Gemma 3's kind): layers with different RoPE bases, layouts and
/// windows. The codec must remove and restore each layer's own rotation and carry every
/// layer's facts through profiles and blobs.
@Suite struct HybridCacheTests {
    static let geometry = Fixtures.geometry
    /// Three sliding layers (base 10,000, window 64) and a global one (base 1,000,000), with
    /// half-split RoPE, as Gemma 3 has.
    static let layers: [LayerAttention] = (0..<4).map { l in
        l == 3 ? LayerAttention(rope: RoPE(layout: .half, theta: 1_000_000, rotaryDims: 16))
               : LayerAttention(rope: RoPE(layout: .half, theta: 10_000, rotaryDims: 16), window: 64)
    }
    static let rope = RoPE(layout: .half, theta: 1_000_000, rotaryDims: 16)

    static func cache(tokens: Int, seed: UInt64, layers: [LayerAttention]? = HybridCacheTests.layers,
                      rope: RoPE = HybridCacheTests.rope) -> KVCache {
        var builder = SyntheticCacheBuilder(geometry: geometry, rope: rope, factors: 12, mixingSeed: 1234, keyBias: 2,
                                            noise: 0.02, valueFactorShift: 3, roundsToFP16: true)
        builder.layerAttention = layers
        return builder.cache(tokens: tokens, seed: seed)
    }

    static func profile(layers: [LayerAttention]?, rope: RoPE) throws -> Profile {
        var options = CalibrationOptions()
        options.ratios = [4, 8]
        return try Calibrator.calibrate(caches: (0..<4).map { cache(tokens: 400, seed: UInt64(100 + $0), layers: layers, rope: rope) },
                                        options: options, provenance: Provenance(rows: 0, sources: [], model: "synthetic"))
    }

    static func middleKeyError(_ a: KVCache, _ b: KVCache) -> Double {
        let p = geometry.featuresPerToken
        return Fixtures.relativeError(Array(a.keys[(4 * p)..<(a.tokenCount - 128) * p]), Array(b.keys[(4 * p)..<(b.tokenCount - 128) * p]))
    }

    /// Per-layer rotation removed exactly: the hybrid cache compresses as well as the same
    /// numbers under one uniform rotation. Removing one RoPE from every layer instead leaves
    /// position-dependent angles in the sliding layers, which the PCA cannot fit.
    @Test func eachLayersRotationIsRemovedAndRestored() throws {
        let profile = try Self.profile(layers: Self.layers, rope: Self.rope)
        #expect(profile.layerAttention == Self.layers)
        let hybrid = Self.cache(tokens: 600, seed: 7)
        // Every layer of every token (the window trimming has its own test).
        var c = try KVTCCompressor(profile: profile, ratio: 4)
        c.trimsWindows = false
        let blob = try c.compress(hybrid)
        #expect(try Blob.summary(of: blob.bytes).formatVersion == 3)
        let restored = try c.decompress(blob.bytes)
        #expect(restored.layerAttention == Self.layers && restored.rope == Self.rope)
        let hybridError = Self.middleKeyError(restored, hybrid)

        let uniformProfile = try Self.profile(layers: nil, rope: Self.rope)
        let uniform = Self.cache(tokens: 600, seed: 7, layers: nil)
        let u = try KVTCCompressor(profile: uniformProfile, ratio: 4)
        let uniformBlob = try u.compress(uniform)
        #expect(try Blob.summary(of: uniformBlob.bytes).formatVersion <= 2)
        let uniformError = Self.middleKeyError(try u.decompress(uniformBlob.bytes), uniform)
        #expect(hybridError < 1.5 * uniformError + 1e-3, "hybrid \(hybridError), uniform \(uniformError)")

        // The same numbers labelled uniform (the sliding layers' keys un-rotated with the
        // global base): the codec's rows lose their structure and the error grows.
        let mislabeled = try KVCache(geometry: hybrid.geometry, rope: Self.rope, positions: hybrid.positions,
                                     keys: hybrid.keys, values: hybrid.values)
        let wrongProfile = try Calibrator.calibrate(
            caches: (0..<4).map { i in
                let h = Self.cache(tokens: 400, seed: UInt64(100 + i))
                return try! KVCache(geometry: h.geometry, rope: Self.rope, positions: h.positions, keys: h.keys, values: h.values)
            },
            options: { var o = CalibrationOptions(); o.ratios = [4, 8]; return o }(),
            provenance: Provenance(rows: 0, sources: [], model: "synthetic"))
        let w = try KVTCCompressor(profile: wrongProfile, ratio: 4)
        let wrongError = Self.middleKeyError(try w.decompress(try w.compress(mislabeled).bytes), mislabeled)
        #expect(wrongError > 2 * hybridError, "one RoPE for every layer: \(wrongError), per layer: \(hybridError)")
    }

    /// Profiles of hybrid caches keep every layer's facts and the out-of-window transforms
    /// (version 3; version 2 without them, which still reads); uniform ones stay version 1;
    /// a profile refuses caches whose layers differ from its own.
    @Test func profilesCarryEveryLayerAndRefuseOthers() throws {
        let profile = try Self.profile(layers: Self.layers, rope: Self.rope)
        let bytes = profile.encoded()
        #expect(bytes[8] == 3)
        let read = try Profile(bytes: bytes)
        #expect(read.layerAttention == Self.layers && read.contentHash == profile.contentHash)
        #expect(read.outOfWindow == profile.outOfWindow && read.outOfWindow?.layers == [3])
        #expect(read.plans.allSatisfy { $0.outOfWindow != nil })
        // Without the out-of-window transforms: version 2, read back as it was written.
        let plain = Profile(geometry: profile.geometry, rope: profile.rope, layerAttention: profile.layerAttention,
                            protection: profile.protection, keys: profile.keys, values: profile.values,
                            plans: profile.plans.map { var p = $0; p.outOfWindow = nil; return p }, provenance: profile.provenance)
        #expect(plain.encoded()[8] == 2)
        let plainRead = try Profile(bytes: plain.encoded())
        #expect(plainRead.outOfWindow == nil && plainRead.contentHash == plain.contentHash)
        #expect(try KVTCCompressor(profile: plainRead, ratio: 4).compress(Self.cache(tokens: 600, seed: 3)).report.outOfWindowTokens == nil)
        #expect(Fixtures.profile(ratios: [4]).encoded()[8] == 1)
        let uniform = Self.cache(tokens: 300, seed: 3, layers: nil)
        #expect(throws: ProfileError.self) { try profile.check(uniform) }
        #expect(throws: (any Error).self) { _ = try KVTCCompressor(profile: profile, ratio: 4).compress(uniform) }
        // A blob of a hybrid cache cannot be decoded with a uniform profile of the same shape.
        let blob = try KVTCCompressor(profile: profile, ratio: 4).compress(Self.cache(tokens: 300, seed: 4))
        let other = try KVTCCompressor(profile: try Self.profile(layers: nil, rope: Self.rope), ratio: 4)
        #expect(throws: KVTCError.self) { _ = try other.decompress(blob.bytes) }
    }

    /// Tokens no sliding window will see again keep only the full-context layer: the blob
    /// shrinks by about the dropped layers' share, the kept layer's rows are as accurate as
    /// with every layer kept, the dropped rows restore as zeros (a query after the cache's
    /// end never reads them), and every other row is what the untrimmed blob restores.
    @Test func tokensBeyondEveryWindowKeepOnlyTheFullContextLayers() throws {
        let profile = try Self.profile(layers: Self.layers, rope: Self.rope)
        let cache = Self.cache(tokens: 600, seed: 8)
        // Few recent tokens, so that some compressed tokens are still inside the window of 64.
        let protection = Protection(sinkTokens: 4, recentTokens: 16)
        // bfloat16 reconstruction, as layer-wise decoding uses: the comparisons below are of
        // which rows hold what, so both decodes must do the same arithmetic (8-bit integer
        // reconstruction is checked against f32 in `KVTCCompressorTests`).
        let trimmed = try KVTCCompressor(profile: profile, ratio: 4, protection: protection, reconstruction: .bf16)
        var whole = trimmed
        whole.trimsWindows = false
        let a = try trimmed.compress(cache), b = try whole.compress(cache)
        // A query after position 599 sees positions 537 and later in a window of 64.
        let expectedOut = 537 - 4
        #expect(a.report.outOfWindowTokens == expectedOut && b.report.outOfWindowTokens == nil)
        let summary = try Blob.summary(of: a.bytes)
        #expect(summary.formatVersion == 4 && summary.outOfWindowTokens == expectedOut)
        #expect(try Blob.summary(of: b.bytes).formatVersion == 3)
        // 533 of 580 compressed tokens keep 1 of 4 layers, coded to the full rows' error per
        // feature. Every layer here mixes the same 12 factors, so one layer needs most of the
        // bits of four (real caches save more: README); never more than a full row's.
        #expect(Double(a.bytes.count) < 0.8 * Double(b.bytes.count), "\(a.bytes.count) vs \(b.bytes.count)")

        let ra = try trimmed.decompress(a.bytes), rb = try whole.decompress(b.bytes)
        #expect(ra.positions == cache.positions && ra.layerAttention == Self.layers)
        let p = Self.geometry.featuresPerToken, f = Self.geometry.featuresPerLayer
        func rows(_ c: KVCache, keys: Bool, tokens: Range<Int>, layer l: Int) -> [Float] {
            let s = keys ? c.keys : c.values
            var out: [Float] = []
            for t in tokens {
                let start: Int = t * p + l * f
                out += s[start..<(start + f)]
            }
            return out
        }
        let out = 4..<537
        for keys in [true, false] {
            // The full-context layer of out-of-window tokens: its own PCA at the same ratio.
            let trimmedError = Fixtures.relativeError(rows(ra, keys: keys, tokens: out, layer: 3), rows(cache, keys: keys, tokens: out, layer: 3))
            let wholeError = Fixtures.relativeError(rows(rb, keys: keys, tokens: out, layer: 3), rows(cache, keys: keys, tokens: out, layer: 3))
            #expect(trimmedError < 1.5 * wholeError + 1e-3, "keys \(keys): trimmed \(trimmedError), whole \(wholeError)")
            // Sliding layers of out-of-window tokens: zero.
            for l in 0..<3 { #expect(rows(ra, keys: keys, tokens: out, layer: l).allSatisfy { $0 == 0 }) }
            // Everything else: as the untrimmed blob restores it (sinks and recent rows exactly).
            for l in 0..<4 {
                #expect(rows(ra, keys: keys, tokens: 0..<4, layer: l) == rows(cache, keys: keys, tokens: 0..<4, layer: l))
                #expect(rows(ra, keys: keys, tokens: 584..<600, layer: l) == rows(cache, keys: keys, tokens: 584..<600, layer: l))
                let inWindow = Fixtures.relativeError(rows(ra, keys: keys, tokens: 537..<584, layer: l), rows(rb, keys: keys, tokens: 537..<584, layer: l))
                #expect(inWindow < 1e-5, "layer \(l): \(inWindow)")
            }
        }
        // Layer by layer as whole: the same rows, up to f32 rounding (OpenBLAS may sum a
        // product of a layer's columns in another order than one of all columns: its AVX2
        // kernels do, `ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell`); zeros stay zeros.
        let decoder = try LayerwiseDecoder(a.bytes, compressor: trimmed)
        for l in 0..<4 {
            let layer = decoder.layer(l)
            for (got, keys) in [(layer.keys, true), (layer.values, false)] {
                let whole = rows(ra, keys: keys, tokens: 0..<600, layer: l)
                #expect(Fixtures.relativeError(got, whole) < 1e-6, "layer \(l) keys \(keys)")
                #expect(zip(got, whole).allSatisfy { ($0 == 0) == ($1 == 0) })
            }
        }
        // rANS-coded and packed codes restore the same trimmed cache.
        var packed = trimmed
        packed.codeCoding = .packed
        let q = try trimmed.quantize(cache)
        #expect(try trimmed.decompress(packed.assemble(q).bytes).keys == trimmed.decompress(trimmed.assemble(q).bytes).keys)
    }

    /// A trimmed blob appended after another restores as each blob alone (its rows start
    /// after the out-of-window ones, so it is never merged with the previous blob's rows).
    @Test func trimmedBlobsDecodeInASequence() throws {
        let profile = try Self.profile(layers: Self.layers, rope: Self.rope)
        let cache = Self.cache(tokens: 700, seed: 9)
        let c = try KVTCCompressor(profile: profile, ratio: 8, protection: Protection(sinkTokens: 4, recentTokens: 0))
        // Each blob trims before its own last position + 2 - 64.
        let first = try c.compress(cache.tokens(0..<300)), second = try c.compress(cache.tokens(300..<700))
        #expect(first.report.outOfWindowTokens == 299 + 2 - 64 - 4, "\(String(describing: first.report.outOfWindowTokens))")
        #expect(second.report.outOfWindowTokens == 699 + 2 - 64 - 300, "\(String(describing: second.report.outOfWindowTokens))")
        var sequence = KVCache(geometry: cache.geometry, rope: cache.rope, layerAttention: cache.layerAttention)
        try c.decompress(sequence: [first.bytes, second.bytes], appendingTo: &sequence)
        var separate = try c.decompress(first.bytes)
        try c.decompress(second.bytes, appendingTo: &separate)
        #expect(sequence.positions == cache.positions)
        #expect(Fixtures.relativeError(sequence.keys, separate.keys) < 1e-5 && Fixtures.relativeError(sequence.values, separate.values) < 1e-5)
    }

    /// Damaged per-layer tables in a version 3 blob are refused, not misread.
    @Test func damagedLayerTablesAreRefused() throws {
        let profile = try Self.profile(layers: Self.layers, rope: Self.rope)
        let c = try KVTCCompressor(profile: profile, ratio: 8)
        var bytes = try c.compress(Self.cache(tokens: 300, seed: 5)).bytes
        // The layer table's first layout byte sits right after the code-coding byte; any
        // header change breaks the header checksum, so flip a byte and expect a typed error.
        for offset in [20, 64, 100] where offset < bytes.count {
            var damaged = bytes
            damaged[offset] ^= 0x40
            #expect(throws: KVTCError.self) { _ = try c.decompress(damaged) }
        }
        bytes.removeLast(5)
        #expect(throws: KVTCError.self) { _ = try c.decompress(bytes) }
    }
}
