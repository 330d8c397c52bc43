import Foundation
import KVTCCache
import KVTCCodec
import KVTCNumerics

/// FP8-E4M3 with one scale per layer and stream (per tensor): 8 bits per element.
public struct FP8Codec: MiddleCodec {
    public var method: String { "fp8" }
    public var setting: String { "e4m3" }
    public var nominalRatio: Double? { 2 }
    public init() {}

    /// Non-negative E4M3 values, code 0...126 (127 is NaN).
    static let magnitudes: [Float] = (0..<127).map { c in
        let e = c >> 3, m = c & 7
        return e == 0 ? Float(m) / 8 * pow(2, -6) : (1 + Float(m) / 8) * pow(2, Float(e - 7))
    }

    static func encode(_ x: Float) -> UInt8 {
        let a = min(abs(x), 448)
        var lo = 0, hi = 126
        while lo < hi { let mid = (lo + hi) / 2; if magnitudes[mid] < a { lo = mid + 1 } else { hi = mid } }
        var c = lo
        if c > 0, a - magnitudes[c - 1] < magnitudes[c] - a || (a - magnitudes[c - 1] == magnitudes[c] - a && (c - 1) % 2 == 0) { c -= 1 }
        return UInt8(c) | (x < 0 ? 0x80 : 0)
    }

    static func decode(_ b: UInt8) -> Float {
        let m = magnitudes[Int(min(b & 0x7F, 126))]
        return b & 0x80 != 0 ? -m : m
    }

    public func encode(middle: KVCache, context: KVCache) throws -> [UInt8] {
        let g = middle.geometry, p = g.featuresPerToken, f = g.featuresPerLayer
        var out = ByteWriter()
        for stream in [middle.keys, middle.values] {
            for l in 0..<g.layers {
                var amax: Float = 0
                for t in 0..<middle.tokenCount { for i in 0..<f { amax = max(amax, abs(stream[t * p + l * f + i])) } }
                let scale = amax > 0 ? amax / 448 : 1
                out.f32(scale)
                for t in 0..<middle.tokenCount { for i in 0..<f { out.bytes.append(Self.encode(stream[t * p + l * f + i] / scale)) } }
            }
        }
        return out.bytes
    }

    public func decode(_ bytes: [UInt8], template: MiddleTemplate) throws -> KVCache {
        let g = template.geometry, p = g.featuresPerToken, f = g.featuresPerLayer, n = template.positions.count
        var r = ByteReader(bytes)
        var streams: [[Float]] = []
        for _ in 0..<2 {
            var s = [Float](repeating: 0, count: n * p)
            for l in 0..<g.layers {
                let scale = try r.f32()
                guard scale.isFinite else { throw BaselineError.corrupt("scale") }
                for t in 0..<n { for i in 0..<f { s[t * p + l * f + i] = Self.decode(try r.u8()) * scale } }
            }
            streams.append(s)
        }
        try r.finish()
        return try KVCache(geometry: g, rope: template.rope, layerAttention: template.layerAttention, positions: template.positions, keys: streams[0], values: streams[1], model: template.model)
    }
}

/// Per-token uniform quantization: every head vector of every token gets its own fp16
/// shift and scale.
public struct PerTokenIntCodec: MiddleCodec {
    public let bits: Int
    public var method: String { "int\(bits)" }
    public var setting: String { "per-token" }
    public var nominalRatio: Double? { 16 / Double(bits) }
    public init(bits: Int) {
        precondition([2, 4, 8].contains(bits))
        self.bits = bits
    }

    public func encode(middle: KVCache, context: KVCache) throws -> [UInt8] {
        let d = middle.geometry.headDim
        var out = ByteWriter()
        for stream in [middle.keys, middle.values] {
            for v in stride(from: 0, to: stream.count, by: d) {
                StoredGroup.write(Array(stream[v..<(v + d)]), bits: bits, to: &out)
            }
        }
        return out.bytes
    }

    public func decode(_ bytes: [UInt8], template: MiddleTemplate) throws -> KVCache {
        let g = template.geometry, d = g.headDim, n = template.positions.count
        let vectors = n * g.featuresPerToken / d
        let stored = StoredGroup.byteCount(values: d, bits: bits)
        guard bytes.count == 2 * vectors * stored else { throw BaselineError.corrupt("payload length") }
        var streams: [[Float]] = []
        var o = 0
        for _ in 0..<2 {
            var s: [Float] = []
            s.reserveCapacity(vectors * d)
            for _ in 0..<vectors {
                s += try StoredGroup.read(bytes[o..<(o + stored)], count: d, bits: bits)
                o += stored
            }
            streams.append(s)
        }
        return try KVCache(geometry: g, rope: template.rope, layerAttention: template.layerAttention, positions: template.positions, keys: streams[0], values: streams[1], model: template.model)
    }
}

/// KIVI (Liu et al. 2024): keys quantized per channel over groups of `group` tokens, values
/// per token over groups of `group` channels; the last `n mod group` tokens (the residual
/// that does not fill a key group) stay exact in fp16.
public struct KIVICodec: MiddleCodec {
    public let bits: Int
    public let group: Int
    public var method: String { "kivi\(bits)" }
    public var setting: String { "g\(group)" }
    public var nominalRatio: Double? { 16 / Double(bits) }
    public init(bits: Int, group: Int = 32) {
        self.bits = bits
        self.group = group
    }

    public func encode(middle: KVCache, context: KVCache) throws -> [UInt8] {
        let p = middle.geometry.featuresPerToken, n = middle.tokenCount
        let full = n / group * group
        var out = ByteWriter()
        // Keys: for each token group, each channel.
        for t0 in stride(from: 0, to: full, by: group) {
            for c in 0..<p {
                StoredGroup.write((0..<group).map { middle.keys[(t0 + $0) * p + c] }, bits: bits, to: &out)
            }
        }
        // Values: for each token, each channel group.
        for t in 0..<full {
            for c0 in stride(from: 0, to: p, by: group) {
                StoredGroup.write(Array(middle.values[(t * p + c0)..<(t * p + min(p, c0 + group))]), bits: bits, to: &out)
            }
        }
        // Residual tokens exact.
        for stream in [middle.keys, middle.values] { ExactRowEncoding.fp16.append(stream[(full * p)..<(n * p)], to: &out) }
        return out.bytes
    }

    public func decode(_ bytes: [UInt8], template: MiddleTemplate) throws -> KVCache {
        let g = template.geometry, p = g.featuresPerToken, n = template.positions.count
        let full = n / group * group
        var keys = [Float](repeating: 0, count: n * p), values = keys
        var o = 0
        func take(_ count: Int) throws -> ArraySlice<UInt8> {
            guard o + count <= bytes.count else { throw BaselineError.corrupt("payload ends early") }
            defer { o += count }
            return bytes[o..<(o + count)]
        }
        func readGroup(_ count: Int) throws -> [Float] {
            try StoredGroup.read(try take(StoredGroup.byteCount(values: count, bits: bits)), count: count, bits: bits)
        }
        for t0 in stride(from: 0, to: full, by: self.group) {
            for c in 0..<p {
                let v = try readGroup(self.group)
                for j in 0..<self.group { keys[(t0 + j) * p + c] = v[j] }
            }
        }
        for t in 0..<full {
            for c0 in stride(from: 0, to: p, by: self.group) {
                let w = min(p, c0 + self.group) - c0
                let v = try readGroup(w)
                for j in 0..<w { values[t * p + c0 + j] = v[j] }
            }
        }
        let residual = ExactRowEncoding.fp16.byteCount(values: (n - full) * p)
        keys.replaceSubrange((full * p)..<(n * p), with: ExactRowEncoding.fp16.decode(try take(residual)))
        values.replaceSubrange((full * p)..<(n * p), with: ExactRowEncoding.fp16.decode(try take(residual)))
        guard o == bytes.count else { throw BaselineError.corrupt("payload has trailing bytes") }
        return try KVCache(geometry: g, rope: template.rope, layerAttention: template.layerAttention, positions: template.positions, keys: keys, values: values, model: template.model)
    }
}

/// Token eviction: keeps a subset of the middle tokens exactly (fp16) and drops the rest.
/// The kept subset is evenly strided, or chosen by an importance score per token (such as
/// the attention an observation window pays to each token, as SnapKV and H2O do).
public struct EvictionCodec: MiddleCodec {
    /// How tokens are chosen.
    public enum Selection: Sendable {
        /// Every `ratio`-th token.
        case strided
        /// The highest-scoring tokens; `scores` gives one score per token of the whole cache.
        case scored(name: String, scores: @Sendable (KVCache) -> [Float])
    }

    public let ratio: Double
    public let selection: Selection
    public var method: String {
        switch selection {
        case .strided: return "evict-strided"
        case .scored(let name, _): return "evict-\(name)"
        }
    }
    public var setting: String { Profile.formatRatio(ratio) }
    public var nominalRatio: Double? { ratio }

    public init(ratio: Double, selection: Selection) {
        self.ratio = ratio
        self.selection = selection
    }

    public func encode(middle: KVCache, context: KVCache) throws -> [UInt8] {
        let n = middle.tokenCount, p = middle.geometry.featuresPerToken
        // Keep count so that kept fp16 rows plus 4-byte indices fit the budget.
        let keep = max(1, min(n, Int((Double(n) * Double(4 * p) / ratio / Double(4 * p + 4)).rounded(.down))))
        var kept: [Int]
        switch selection {
        case .strided:
            kept = (0..<keep).map { Int((Double($0) + 0.5) * Double(n) / Double(keep)) }
        case .scored(_, let scorer):
            let all = scorer(context)
            guard all.count == context.tokenCount else { throw BaselineError.invalidCache("scores for \(all.count) tokens, cache has \(context.tokenCount)") }
            let offset = context.positions.firstIndex(of: middle.positions[0]) ?? 0
            let s = Array(all[offset..<(offset + n)])
            kept = (0..<n).sorted { s[$0] > s[$1] }.prefix(keep).sorted()
        }
        var out = ByteWriter()
        out.u32(UInt32(kept.count))
        for i in kept { out.u32(UInt32(i)) }
        for stream in [middle.keys, middle.values] {
            for i in kept { ExactRowEncoding.fp16.append(stream[(i * p)..<((i + 1) * p)], to: &out) }
        }
        return out.bytes
    }

    public func decode(_ bytes: [UInt8], template: MiddleTemplate) throws -> KVCache {
        let p = template.geometry.featuresPerToken, n = template.positions.count
        var r = ByteReader(bytes)
        let count = Int(try r.u32())
        guard count <= n, bytes.count == 4 + 4 * count + 4 * count * p else { throw BaselineError.corrupt("payload length") }
        var idx: [Int] = []
        for _ in 0..<count {
            let i = Int(try r.u32())
            let previous = idx.last ?? -1
            guard i < n, previous < i else { throw BaselineError.corrupt("token index") }
            idx.append(i)
        }
        var streams: [[Float]] = []
        for _ in 0..<2 {
            streams.append(ExactRowEncoding.fp16.decode(bytes[try r.take(ExactRowEncoding.fp16.byteCount(values: count * p))]))
        }
        return try KVCache(geometry: template.geometry, rope: template.rope, layerAttention: template.layerAttention, positions: idx.map { template.positions[$0] },
                           keys: streams[0], values: streams[1], model: template.model)
    }
}

/// Drops every compressible token (keeps only sinks and the recent window): the floor any
/// lossy method must beat.
public struct DropAllCodec: MiddleCodec {
    public var method: String { "drop-middle" }
    public var setting: String { "all" }
    public var nominalRatio: Double? { nil }
    public init() {}
    public func encode(middle: KVCache, context: KVCache) throws -> [UInt8] { [] }
    public func decode(_ bytes: [UInt8], template: MiddleTemplate) throws -> KVCache {
        guard bytes.isEmpty else { throw BaselineError.corrupt("payload") }
        return try KVCache(geometry: template.geometry, rope: template.rope, layerAttention: template.layerAttention, positions: [], keys: [], values: [], model: template.model)
    }
}

/// Stores the middle tokens as plain fp16: the reference point of every ratio (2x against
/// f32, 1x against fp16).
public struct FP16Codec: MiddleCodec {
    public var method: String { "fp16" }
    public var setting: String { "exact" }
    public var nominalRatio: Double? { 1 }
    public init() {}

    public func encode(middle: KVCache, context: KVCache) throws -> [UInt8] {
        var out = ByteWriter(capacity: 2 * ExactRowEncoding.fp16.byteCount(values: middle.keys.count))
        for stream in [middle.keys, middle.values] { ExactRowEncoding.fp16.append(stream[...], to: &out) }
        return out.bytes
    }

    public func decode(_ bytes: [UInt8], template: MiddleTemplate) throws -> KVCache {
        let n = template.positions.count * template.geometry.featuresPerToken
        guard bytes.count == 2 * ExactRowEncoding.fp16.byteCount(values: n) else { throw BaselineError.corrupt("payload length") }
        let all = ExactRowEncoding.fp16.decode(bytes[...])
        return try KVCache(geometry: template.geometry, rope: template.rope, layerAttention: template.layerAttention, positions: template.positions,
                           keys: Array(all[0..<n]), values: Array(all[n...]), model: template.model)
    }
}

/// One group as the integer baselines store it: the fp16 shift and scale (little-endian),
/// then the codes packed. Quantized with KVTC's own ``GroupQuantizer`` and ``CodePacker``.
enum StoredGroup {
    /// Bytes of a stored group of `values` values.
    static func byteCount(values: Int, bits: Int) -> Int { 4 + CodePacker.byteCount(codes: values, bits: bits) }

    /// Quantizes `values` as one group and appends it to `out`.
    static func write(_ values: [Float], bits: Int, to out: inout ByteWriter) {
        let q = GroupQuantizer.quantize(values, bits: bits)
        out.u16(q.shift)
        out.u16(q.scale)
        out.raw(CodePacker.pack(q.codes, bits: bits))
    }

    /// The `count` values of the group stored in `bytes` (exactly ``byteCount(values:bits:)`` bytes).
    static func read(_ bytes: ArraySlice<UInt8>, count: Int, bits: Int) throws(BaselineError) -> [Float] {
        let b = bytes.startIndex
        let group = GroupQuantizer.Group(codes: CodePacker.unpack(bytes[(b + 4)...], count: count, bits: bits),
                                         shift: UInt16(bytes[b]) | UInt16(bytes[b + 1]) << 8,
                                         scale: UInt16(bytes[b + 2]) | UInt16(bytes[b + 3]) << 8)
        guard let values = GroupQuantizer.dequantize(group) else { throw .corrupt("invalid shift or scale") }
        return values
    }
}
