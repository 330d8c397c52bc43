import Foundation
import Testing
import KVTCCache
import KVTCCodec
@testable import KVTCEvaluation

/// The layer-group ablations (per-layer PCA, Gemma's global and sliding sets): caches split
/// into groups and reassembled keep every value and every layer's attention facts.
@Suite struct LayerGroupTests {
    static let attention = (0..<4).map { l in
        l % 2 == 1 ? LayerAttention(rope: RoPE(layout: .half, theta: 1_000_000, rotaryDims: 8))
                   : LayerAttention(rope: RoPE(layout: .half, theta: 10_000, rotaryDims: 8), window: 16)
    }

    static func hybrid() -> KVCache {
        let c = smallCache(tokens: 200, layers: 4)
        return try! KVCache(geometry: c.geometry, rope: attention[1].rope, layerAttention: attention, positions: c.positions,
                            keys: c.keys, values: c.values, model: c.model)
    }

    @Test func groupsSplitAndReassembleExactly() throws {
        let cache = Self.hybrid()
        let groups = LayerGroupCompressor.layerSets(Self.attention)
        #expect(groups == [[1, 3], [0, 2]])
        let parts = try groups.map { try cache.layers($0) }
        #expect(parts[0].layerAttention == [Self.attention[1], Self.attention[3]] && parts[0].rope == Self.attention[1].rope)
        #expect(parts[1].rope == Self.attention[0].rope && parts[1].geometry.layers == 2)
        #expect(try KVCache.assembling(parts, groups: groups, rope: cache.rope) == cache)
        #expect(LayerGroupCompressor.layerSets(LayerAttention.uniform(cache.rope, layers: 4)) == [[0, 1, 2, 3]])
    }

    @Test func aGroupCompressorRoundTripsWithEachGroupsProfile() throws {
        let cache = Self.hybrid()
        let groups = LayerGroupCompressor.layerSets(Self.attention)
        var options = CalibrationOptions()
        options.ratios = [4]
        let profiles = try LayerGroupCompressor.calibrate(caches: [cache], groups: groups, options: options,
                                                          provenance: Provenance(rows: 0, sources: [], model: "test"))
        #expect(profiles.map(\.geometry.layers) == [2, 2] && profiles[1].layerAttention == [Self.attention[0], Self.attention[2]])
        let c = LayerGroupCompressor(groups: groups, compressors: try profiles.map { try KVTCCompressor(profile: $0, ratio: 4) },
                                     rope: cache.rope, method: "kvtc-layer-sets")
        let blob = try c.compress(cache)
        let back = try c.decompress(blob.bytes)
        #expect(back.layerAttention == cache.layerAttention && back.positions == cache.positions)
        var num = 0.0, den = 0.0
        for i in cache.keys.indices { num += Double((back.keys[i] - cache.keys[i]) * (back.keys[i] - cache.keys[i])); den += Double(cache.keys[i] * cache.keys[i]) }
        #expect((num / den).squareRoot() < 0.1)
        #expect(blob.report.totalBytes == blob.bytes.count)
        #expect(throws: (any Error).self) { _ = try c.decompress(Array(blob.bytes.dropLast(3))) }
    }
}
