import KVTCNumerics
import KVTCCache
import KVTCCodec

/// Precision of tokens kept without lossy compression.
public enum ExactPrecision: String, Sendable, Codable, CaseIterable {
    /// Half precision when every value is exactly representable, else single precision
    /// (what the codec does with its protected tokens): bit-exact.
    case automatic
    /// Always half precision (rounded), as serving engines hold caches.
    case fp16
    /// Always single precision.
    case fp32

    /// The encoding this precision gives `cache`'s rows.
    public func encoding(for cache: KVCache) -> ExactRowEncoding {
        switch self {
        case .automatic: return .lossless([cache.keys[...], cache.values[...]])
        case .fp16: return .fp16
        case .fp32: return .fp32
        }
    }
}

/// A plain serialization of a cache's tokens (keys and values in fp16 or f32).
///
/// Layout (little-endian): magic `KVTCEXR1` | bits u8 (16|32) | layers, kv heads, head dim,
/// tokens u32 | first position u64 | RoPE layout string, theta f64, rotary dims u32 |
/// model string | keys | values. Positions are contiguous from the first one.
public enum ExactRows {
    static let magic = Array("KVTCEXR1".utf8)
    /// Rows of a cache whose layers differ in rotation or window: the header lists every
    /// layer's after the RoPE (layout, theta, rotary dims, window or 0).
    static let magicPerLayer = Array("KVTCEXR2".utf8)

    /// Encodes `cache`, whose positions must be contiguous.
    public static func encode(_ cache: KVCache, precision: ExactPrecision) throws(StoreError) -> [UInt8] {
        if let i = cache.firstNonConsecutivePosition { throw .mismatch("positions are not contiguous at token \(i)") }
        let first = cache.positions.first ?? 0
        let encoding = precision.encoding(for: cache)
        let g = cache.geometry
        let n = cache.tokenCount * g.featuresPerToken
        var s = ByteWriter(capacity: 128 + 2 * encoding.byteCount(values: n))
        let uniform = cache.isUniform
        s.raw(uniform ? magic : magicPerLayer)
        s.u8(UInt8(encoding.bits))
        for v in [g.layers, g.kvHeads, g.headDim, cache.tokenCount] { s.u32(UInt32(v)) }
        s.u64(UInt64(first))
        s.string(cache.rope.layout.rawValue)
        s.f64(cache.rope.theta)
        s.u32(UInt32(cache.rope.rotaryDims))
        if !uniform {
            for l in cache.layerAttention {
                s.string(l.rope.layout.rawValue); s.f64(l.rope.theta); s.u32(UInt32(l.rope.rotaryDims)); s.u32(UInt32(l.window ?? 0))
            }
        }
        s.string(cache.model)
        encoding.append(cache.keys[...], to: &s)
        encoding.append(cache.values[...], to: &s)
        return s.bytes
    }

    /// What the header of encoded rows says.
    struct Header {
        var encoding: ExactRowEncoding
        var geometry: KVGeometry
        var rope: RoPE
        /// Every layer's rotation and window (`KVTCEXR2`), or `nil` for a uniform cache.
        var layerAttention: [LayerAttention]?
        var model: String
        var firstPosition: Int
        var tokens: Int
        /// Offset of the keys.
        var dataStart: Int
    }

    static func header(_ bytes: [UInt8]) throws(StoreError) -> Header {
        var r = ByteReader(bytes)
        do {
            let m = try r.raw(8)
            guard m == magic || m == magicPerLayer else { throw StoreError.invalidEntry("not exact rows") }
            let bits = Int(try r.u8())
            guard let encoding = ExactRowEncoding(rawValue: bits) else { throw StoreError.invalidEntry("precision \(bits) bits") }
            let layers = Int(try r.u32()), heads = Int(try r.u32()), dim = Int(try r.u32()), tokens = Int(try r.u32())
            let first = Int(try r.u64())
            guard let layout = RoPELayout(rawValue: try r.string()) else { throw StoreError.invalidEntry("RoPE layout") }
            let theta = try r.f64()
            let rotary = Int(try r.u32())
            let g = KVGeometry(layers: layers, kvHeads: heads, headDim: dim)
            guard layers > 0, heads > 0, dim > 0, g.featuresPerToken < 1 << 24, first < 1 << 40 else {
                throw StoreError.invalidEntry("geometry \(g)")
            }
            var layerAttention: [LayerAttention]?
            if m == magicPerLayer {
                var list: [LayerAttention] = []
                for _ in 0..<layers {
                    guard let layout = RoPELayout(rawValue: try r.string()) else { throw StoreError.invalidEntry("layer RoPE layout") }
                    let lr = RoPE(layout: layout, theta: try r.f64(), rotaryDims: Int(try r.u32()))
                    let w = Int(try r.u32())
                    do { try lr.validate(headDim: dim) } catch { throw StoreError.invalidEntry(error.description) }
                    list.append(LayerAttention(rope: lr, window: w == 0 ? nil : w))
                }
                layerAttention = list
            }
            let model = try r.string()
            let rope = RoPE(layout: layout, theta: theta, rotaryDims: rotary)
            do { try rope.validate(headDim: dim) } catch { throw StoreError.invalidEntry(error.description) }
            let n = tokens * g.featuresPerToken
            guard r.remaining == 2 * encoding.byteCount(values: n) else {
                throw StoreError.invalidEntry("exact rows hold \(r.remaining) bytes, expected \(2 * encoding.byteCount(values: n))")
            }
            return Header(encoding: encoding, geometry: g, rope: rope, layerAttention: layerAttention, model: model, firstPosition: first, tokens: tokens,
                          dataStart: bytes.count - r.remaining)
        } catch let e as StoreError {
            throw e
        } catch {
            throw .invalidEntry("exact rows are truncated")
        }
    }

    /// What the rows declare (their header, checked against their length), without decoding.
    public static func shape(of bytes: [UInt8]) throws(StoreError) -> CompressedShape {
        let h = try header(bytes)
        return CompressedShape(geometry: h.geometry, rope: h.rope, layerAttention: h.layerAttention, tokens: h.tokens,
                               firstPosition: h.firstPosition)
    }

    /// Decodes bytes made by ``encode(_:precision:)``.
    public static func decode(_ bytes: [UInt8]) throws(StoreError) -> KVCache {
        let h = try header(bytes)
        var cache = KVCache(geometry: h.geometry, rope: h.rope, layerAttention: h.layerAttention, model: h.model,
                            reservingCapacity: h.tokens)
        try append(bytes, header: h, to: &cache)
        return cache
    }

    /// Decodes bytes made by ``encode(_:precision:)`` straight into `cache`, which must have
    /// their geometry and RoPE. On error `cache` is unchanged.
    public static func decode(_ bytes: [UInt8], appendingTo cache: inout KVCache) throws(StoreError) {
        let h = try header(bytes)
        guard h.geometry == cache.geometry, h.rope == cache.rope,
              (h.layerAttention ?? LayerAttention.uniform(h.rope, layers: h.geometry.layers)) == cache.layerAttention else {
            throw .mismatch("exact rows of \(h.geometry) cannot extend a cache of \(cache.geometry)")
        }
        try append(bytes, header: h, to: &cache)
    }

    private static func append(_ bytes: [UInt8], header h: Header, to cache: inout KVCache) throws(StoreError) {
        let n = h.tokens * h.geometry.featuresPerToken
        let first = cache.appendZeroedTokens(positions: Array(h.firstPosition..<(h.firstPosition + h.tokens)))
        let offset = first * h.geometry.featuresPerToken
        bytes.withUnsafeBytes { raw in
            cache.withMutableStreams { k, v in
                for (s, stream) in [k, v].enumerated() {
                    h.encoding.decode(raw.baseAddress! + h.dataStart + s * h.encoding.byteCount(values: n), count: n,
                                      into: stream.baseAddress! + offset)
                }
            }
        }
        do { try cache.validateFinite(tokens: first..<cache.tokenCount) } catch {
            cache.truncate(to: first)
            throw .invalidEntry(error.description)
        }
    }
}

/// A ``CacheCompressor`` that stores every token exactly (fp16 or f32): the "exact cache"
/// policy, and a drop-in chunk codec for a ``CacheStore`` without lossy compression.
public struct ExactCompressor: CacheCompressor {
    /// Precision of the stored values.
    public let precision: ExactPrecision

    public init(precision: ExactPrecision = .fp16) { self.precision = precision }

    public var method: String { "exact" }
    public var setting: String { precision.rawValue }

    public func compress(_ cache: KVCache) throws -> CompressedCache {
        let bytes = try ExactRows.encode(cache, precision: precision)
        let report = CompressionReport(method: method, tokens: cache.tokenCount, compressedTokens: 0, nominalRatio: nil,
                                       compressedTokensFP16Bytes: 0, cacheFP16Bytes: cache.fp16Bytes,
                                       compressedTokensBytesBeforeEntropy: 0, compressedTokensBytes: 0,
                                       totalBytes: bytes.count)
        return CompressedCache(bytes: bytes, report: report)
    }

    public func decompress(_ bytes: [UInt8]) throws -> KVCache { try ExactRows.decode(bytes) }

    public func shape(of bytes: [UInt8]) throws -> CompressedShape? { try ExactRows.shape(of: bytes) }

    public func decompress(_ bytes: [UInt8], appendingTo cache: inout KVCache) throws {
        try ExactRows.decode(bytes, appendingTo: &cache)
    }
}
