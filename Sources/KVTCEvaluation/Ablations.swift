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

    /// The layers `indices` as a cache of their own, each keeping its RoPE and window; the
    /// sub-cache's RoPE is that of its first global layer (of its first layer if none is).
    public func layers(_ indices: [Int]) throws -> KVCache {
        let g = geometry, f = g.featuresPerLayer, p = g.featuresPerToken, q = f * indices.count
        var k = [Float](repeating: 0, count: tokenCount * q), v = k
        for t in 0..<tokenCount {
            for (j, l) in indices.enumerated() {
                for i in 0..<f { k[t * q + j * f + i] = keys[t * p + l * f + i]; v[t * q + j * f + i] = values[t * p + l * f + i] }
            }
        }
        let attention = indices.map { layerAttention[$0] }
        return try KVCache(geometry: KVGeometry(layers: indices.count, kvHeads: g.kvHeads, headDim: g.headDim),
                           rope: (attention.first { $0.window == nil } ?? attention[0]).rope, layerAttention: attention,
                           positions: positions, keys: k, values: v, model: model)
    }

    /// Reassembles caches of layer groups (`parts[i]` holding layers `groups[i]`) into one
    /// cache of `rope`.
    public static func assembling(_ parts: [KVCache], groups: [[Int]], rope: RoPE) throws -> KVCache {
        let first = parts[0]
        let f = first.geometry.featuresPerLayer, L = groups.reduce(0) { $0 + $1.count }, p = f * L, n = first.tokenCount
        var k = [Float](repeating: 0, count: n * p), v = k
        var attention = [LayerAttention?](repeating: nil, count: L)
        for (c, group) in zip(parts, groups) {
            let q = f * group.count
            for (j, l) in group.enumerated() {
                attention[l] = c.layerAttention[j]
                for t in 0..<n { for i in 0..<f { k[t * p + l * f + i] = c.keys[t * q + j * f + i]; v[t * p + l * f + i] = c.values[t * q + j * f + i] } }
            }
        }
        return try KVCache(geometry: KVGeometry(layers: L, kvHeads: first.geometry.kvHeads, headDim: first.geometry.headDim),
                           rope: rope, layerAttention: attention.map { $0! }, positions: first.positions,
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

/// KVTC with a separate PCA and bit plan per group of layers: one per layer (the paper's
/// ablation, `kvtc-per-layer-pca`), or one for a hybrid model's global layers and one for
/// its sliding-window layers (`kvtc-layer-sets`, against one basis over all layers).
public struct LayerGroupCompressor: CacheCompressor {
    /// The layers of each group, in the order their blobs are stored.
    public let groups: [[Int]]
    /// One compressor per group.
    public let compressors: [KVTCCompressor]
    /// The whole cache's RoPE (its global layers').
    public let rope: RoPE
    public let method: String
    public var setting: String { compressors[0].setting }

    public init(groups: [[Int]], compressors: [KVTCCompressor], rope: RoPE, method: String) {
        precondition(groups.count == compressors.count, "one compressor per group")
        self.groups = groups
        self.compressors = compressors
        self.rope = rope
        self.method = method
    }

    /// One group per layer.
    public static func perLayer(_ layers: Int) -> [[Int]] { (0..<layers).map { [$0] } }

    /// A hybrid model's global layers, then its sliding-window layers (one group if all
    /// layers are alike).
    public static func layerSets(_ attention: [LayerAttention]) -> [[Int]] {
        let global = attention.indices.filter { attention[$0].window == nil }
        let sliding = attention.indices.filter { attention[$0].window != nil }
        return [global, sliding].filter { !$0.isEmpty }
    }

    /// Calibrates one profile per group.
    public static func calibrate(caches: [KVCache], groups: [[Int]], options: CalibrationOptions, provenance: Provenance,
                                 progress: ((String) -> Void)? = nil) throws -> [Profile] {
        try groups.enumerated().map { i, group in
            progress?("layer groups: group \(i + 1)/\(groups.count) (\(group.count) layers)")
            return try Calibrator.calibrate(caches: caches.map { try $0.layers(group) }, options: options, provenance: provenance)
        }
    }

    public func compress(_ cache: KVCache) throws -> CompressedCache {
        var out = ByteWriter()
        var reports: [CompressionReport] = []
        for (group, c) in zip(groups, compressors) {
            let blob = try c.compress(cache.layers(group))
            out.u32(UInt32(blob.bytes.count))
            out.bytes += blob.bytes
            reports.append(blob.report)
        }
        let protectedBytes = reports.reduce(0) { $0 + $1.totalBytes - $1.compressedTokensBytes }
        let before = reports.reduce(0) { $0 + $1.compressedTokensBytesBeforeEntropy } + 4 * groups.count
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
        for c in compressors {
            let n = Int(try r.u32())
            parts.append(try c.decompress(Array(bytes[try r.take(n)])))
        }
        try r.finish()
        return try KVCache.assembling(parts, groups: groups, rope: rope)
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
