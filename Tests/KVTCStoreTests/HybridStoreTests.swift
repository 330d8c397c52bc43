import Foundation
import KVTCCache
import KVTCCodec
import KVTCTestSupport
import Testing
@testable import KVTCStore

/// A store serving a hybrid model (layers with their own RoPE and window): its KVTC chunks
/// and exact tails keep every layer's facts, and entries of a uniform model of the same
/// geometry are refused before they are decoded.
@Suite struct HybridStoreTests {
    static let layers = [LayerAttention(rope: RoPE(layout: .half, theta: 10_000, rotaryDims: 8), window: 24),
                         LayerAttention(rope: RoPE(layout: .half, theta: 1_000_000, rotaryDims: 8))]
    static let rope = layers[1].rope

    static func cache(tokens: Int, seed: UInt64, layers: [LayerAttention]?) -> KVCache {
        var b = SyntheticCacheBuilder(geometry: Fixtures.geometry, rope: rope, factors: 6, mixingSeed: 99, noise: 0.01,
                                      valueFactorShift: 2, roundsToFP16: false)
        b.layerAttention = layers
        return b.cache(tokens: tokens, seed: seed)
    }

    static func store(tier: any CacheTier, layers: [LayerAttention]?) throws -> CacheStore {
        var options = CalibrationOptions()
        options.ratios = [4]
        let profile = try Calibrator.calibrate(caches: (0..<3).map { cache(tokens: 300, seed: UInt64(500 + $0), layers: layers) },
                                               options: options, provenance: Provenance(rows: 0, sources: [], model: "synthetic"))
        return try CacheStore(identity: ProducerIdentity(modelHash: String(repeating: "cd", count: 32), profileHash: "shared", codecFormatVersion: 1,
                                                         codec: "kvtc-test"),
                              codec: try CacheStore.kvtcChunkCodec(profile: profile, ratio: 4), tier: tier,
                              configuration: StoreConfiguration(chunkTokens: 32, recentTokens: 16),
                              shape: CacheShape(geometry: Fixtures.geometry, rope: rope, layerAttention: layers))
    }

    @Test func chunksAndTailsKeepEveryLayersAttention() async throws {
        let tier = MemoryTier(budget: 1 << 24)
        let store = try Self.store(tier: tier, layers: Self.layers)
        let tokens = Fixtures.tokens(100, seed: 3)
        let cache = Self.cache(tokens: 100, seed: 3, layers: Self.layers)
        _ = try await store.store(tokens: tokens, cache: cache)
        let restored = try #require(await store.restore(tokens: tokens))
        #expect(restored.matchedTokens == 100)
        #expect(restored.cache.layerAttention == Self.layers && restored.cache.rope == Self.rope)
        let p = Fixtures.geometry.featuresPerToken
        #expect(Array(restored.cache.keys[(84 * p)...]) == Array(cache.keys[(84 * p)...]))
        // As close as the same numbers stored by a uniform model's store.
        let plain = try Self.store(tier: MemoryTier(budget: 1 << 24), layers: nil)
        let plainCache = Self.cache(tokens: 100, seed: 3, layers: nil)
        _ = try await plain.store(tokens: tokens, cache: plainCache)
        let plainRestored = try #require(await plain.restore(tokens: tokens))
        func error(_ a: [Float], _ b: [Float]) -> Double {
            zip(a, b).reduce(0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) } / b.reduce(0) { $0 + Double($1 * $1) }
        }
        let hybridError = error(restored.cache.keys, cache.keys), plainError = error(plainRestored.cache.keys, plainCache.keys)
        #expect(hybridError < 1.5 * plainError + 1e-4, "hybrid \(hybridError), uniform \(plainError)")

        // The exact tail's rows say they hold a hybrid cache.
        let rows = try ExactRows.encode(try cache.tokens(90..<100), precision: .fp16)
        #expect(Array(rows[0..<8]) == Array("KVTCEXR2".utf8))
        #expect(try ExactRows.decode(rows).layerAttention == Self.layers)

        // A uniform model's store under the same producer identity (a misconfigured fleet)
        // on the same tier: its shape refuses the hybrid entries before decoding them.
        let uniform = try Self.store(tier: tier, layers: nil)
        #expect(await uniform.restore(tokens: tokens) == nil)
        #expect(!CacheShape(geometry: Fixtures.geometry, rope: Self.rope).admits(restored.cache))
    }
}
