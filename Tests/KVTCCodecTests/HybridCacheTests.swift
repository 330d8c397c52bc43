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
        let c = try KVTCCompressor(profile: profile, ratio: 4)
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

    /// Profiles of hybrid caches are version 2 and keep every layer's facts; uniform ones
    /// stay version 1; a profile refuses caches whose layers differ from its own.
    @Test func profilesCarryEveryLayerAndRefuseOthers() throws {
        let profile = try Self.profile(layers: Self.layers, rope: Self.rope)
        let bytes = profile.encoded()
        #expect(bytes[8] == 2)
        let read = try Profile(bytes: bytes)
        #expect(read.layerAttention == Self.layers && read.contentHash == profile.contentHash)
        #expect(Fixtures.profile(ratios: [4]).encoded()[8] == 1)
        let uniform = Self.cache(tokens: 300, seed: 3, layers: nil)
        #expect(throws: ProfileError.self) { try profile.check(uniform) }
        #expect(throws: (any Error).self) { _ = try KVTCCompressor(profile: profile, ratio: 4).compress(uniform) }
        // A blob of a hybrid cache cannot be decoded with a uniform profile of the same shape.
        let blob = try KVTCCompressor(profile: profile, ratio: 4).compress(Self.cache(tokens: 300, seed: 4))
        let other = try KVTCCompressor(profile: try Self.profile(layers: nil, rope: Self.rope), ratio: 4)
        #expect(throws: KVTCError.self) { _ = try other.decompress(blob.bytes) }
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
