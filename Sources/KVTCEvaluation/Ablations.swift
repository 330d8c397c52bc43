import Foundation
import KVTCCache
import KVTCCodec
import KVTCNumerics

extension KVCache {
    /// The same numbers labelled with other RoPE settings (no rotation is applied); every
    /// layer `newRoPE` over the whole context unless `layerAttention` says otherwise.
    public func relabeled(rope newRoPE: RoPE, layerAttention: [LayerAttention]? = nil) throws -> KVCache {
        try KVCache(geometry: geometry, rope: newRoPE, layerAttention: layerAttention, positions: positions, keys: keys,
                    values: values, model: model)
    }

    /// One layer as a cache of its own (geometry with one layer).
    public func layer(_ l: Int) throws -> KVCache {
        let g = geometry, f = g.featuresPerLayer, p = g.featuresPerToken
        var k = [Float](repeating: 0, count: tokenCount * f), v = k
        for t in 0..<tokenCount {
            for i in 0..<f { k[t * f + i] = keys[t * p + l * f + i]; v[t * f + i] = values[t * p + l * f + i] }
        }
        return try KVCache(geometry: KVGeometry(layers: 1, kvHeads: g.kvHeads, headDim: g.headDim),
                           rope: layerAttention[l].rope, layerAttention: [layerAttention[l]],
                           positions: positions, keys: k, values: v, model: model)
    }

    /// Reassembles per-layer caches into one, whose RoPE is `rope` (the layers keep theirs).
    public static func stacking(layers: [KVCache], rope: RoPE) throws -> KVCache {
        let first = layers[0]
        let f = first.geometry.featuresPerLayer, L = layers.count, p = f * L, n = first.tokenCount
        var k = [Float](repeating: 0, count: n * p), v = k
        for (l, c) in layers.enumerated() {
            for t in 0..<n { for i in 0..<f { k[t * p + l * f + i] = c.keys[t * f + i]; v[t * p + l * f + i] = c.values[t * f + i] } }
        }
        return try KVCache(geometry: KVGeometry(layers: L, kvHeads: first.geometry.kvHeads, headDim: first.geometry.headDim),
                           rope: rope, layerAttention: layers.flatMap(\.layerAttention), positions: first.positions,
                           keys: k, values: v, model: first.model)
    }
}

/// KVTC without removing RoPE from keys (an ablation): the profile is fitted to rotated
/// keys and caches are compressed as they are.
public struct RoPEBlindCompressor: CacheCompressor {
    public let inner: KVTCCompressor
    public let rope: RoPE
    /// The model's per-layer rotations and windows, restored on the decoded caches.
    public let layerAttention: [LayerAttention]?
    public var method: String { "kvtc-no-rope-removal" }
    public var setting: String { inner.setting }

    public init(inner: KVTCCompressor, rope: RoPE, layerAttention: [LayerAttention]? = nil) {
        self.inner = inner
        self.rope = rope
        self.layerAttention = layerAttention
    }

    /// Calibrates the ablation's profile from caches (their keys are taken as rotated).
    public static func calibrate(caches: [KVCache], options: CalibrationOptions, provenance: Provenance,
                                 progress: ((String) -> Void)? = nil) throws -> Profile {
        let blind = try caches.map { try $0.relabeled(rope: .none(headDim: $0.geometry.headDim)) }
        return try Calibrator.calibrate(caches: blind, options: options, provenance: provenance, progress: progress)
    }

    public func compress(_ cache: KVCache) throws -> CompressedCache {
        var r = try inner.compress(cache.relabeled(rope: .none(headDim: cache.geometry.headDim)))
        r.report.method = method
        return r
    }

    public func decompress(_ bytes: [UInt8]) throws -> KVCache {
        try inner.decompress(bytes).relabeled(rope: rope, layerAttention: layerAttention)
    }
}

/// KVTC with a separate PCA and bit plan per layer (the paper's ablation): each layer's
/// cache is compressed by its own profile.
public struct PerLayerCompressor: CacheCompressor {
    public let layers: [KVTCCompressor]
    public var method: String { "kvtc-per-layer-pca" }
    public var setting: String { layers[0].setting }

    public init(layers: [KVTCCompressor]) { self.layers = layers }

    /// Calibrates one profile per layer.
    public static func calibrate(caches: [KVCache], options: CalibrationOptions, provenance: Provenance,
                                 progress: ((String) -> Void)? = nil) throws -> [Profile] {
        let L = caches[0].geometry.layers
        return try (0..<L).map { l in
            progress?("per-layer PCA: layer \(l + 1)/\(L)")
            return try Calibrator.calibrate(caches: caches.map { try $0.layer(l) }, options: options, provenance: provenance)
        }
    }

    public func compress(_ cache: KVCache) throws -> CompressedCache {
        var out = ByteWriter()
        var reports: [CompressionReport] = []
        for (l, c) in layers.enumerated() {
            let blob = try c.compress(cache.layer(l))
            out.u32(UInt32(blob.bytes.count))
            out.bytes += blob.bytes
            reports.append(blob.report)
        }
        let protectedBytes = reports.reduce(0) { $0 + $1.totalBytes - $1.compressedTokensBytes }
        let before = reports.reduce(0) { $0 + $1.compressedTokensBytesBeforeEntropy } + 4 * layers.count
        let report = CompressionReport(method: method, tokens: cache.tokenCount, compressedTokens: reports[0].compressedTokens,
                                       nominalRatio: reports[0].nominalRatio,
                                       compressedTokensFP16Bytes: reports.reduce(0) { $0 + $1.compressedTokensFP16Bytes },
                                       cacheFP16Bytes: cache.fp16Bytes, compressedTokensBytesBeforeEntropy: before,
                                       compressedTokensBytes: out.bytes.count - protectedBytes, totalBytes: out.bytes.count)
        return CompressedCache(bytes: out.bytes, report: report)
    }

    public func decompress(_ bytes: [UInt8]) throws -> KVCache {
        var r = ByteReader(bytes)
        var parts: [KVCache] = []
        for c in layers {
            let n = Int(try r.u32())
            parts.append(try c.decompress(Array(bytes[try r.take(n)])))
        }
        try r.finish()
        // The whole cache's RoPE is its global layers' (every layer's, for a uniform model).
        let rope = parts.first { $0.layerAttention[0].window == nil }?.rope ?? parts[0].rope
        return try KVCache.stacking(layers: parts, rope: rope)
    }
}

extension Profile {
    /// The same bases with plans that simply truncate: the leading components at 8 bits in
    /// groups of 64, as many as each ratio's budget allows (an ablation without the DP).
    public func truncationVariant() -> Profile {
        let p = geometry.featuresPerToken
        func plan(_ ratio: Double, rank: Int) -> BitPlan {
            let budget = Int(16 * Double(p) / ratio)
            let groupBits = 64 * 8 + BitPlan.metadataBitsPerGroup
            let groups = min(budget / groupBits, rank / 64)
            return BitPlan(groups: (0..<groups).map { PlanGroup(start: $0 * 64, size: 64, type: .int8) })
        }
        let plans = self.plans.map {
            RatioPlan(ratio: $0.ratio, keys: plan($0.ratio, rank: keys.basis.rank), values: plan($0.ratio, rank: values.basis.rank),
                      calibrationErrorKeys: -1, calibrationErrorValues: -1)
        }
        return Profile(geometry: geometry, rope: rope, layerAttention: layerAttention, protection: protection, keys: keys,
                       values: values, plans: plans,
                       provenance: provenance)
    }
}
