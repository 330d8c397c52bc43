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
}

/// A plain serialization of a cache's tokens (keys and values in fp16 or f32).
///
/// Layout (little-endian): magic `KVTCEXR1` | bits u8 (16|32) | layers, kv heads, head dim,
/// tokens u32 | first position u64 | RoPE layout string, theta f64, rotary dims u32 |
/// model string | keys | values. Positions are contiguous from the first one.
public enum ExactRows {
    static let magic = Array("KVTCEXR1".utf8)

    /// Encodes `cache`, whose positions must be contiguous.
    public static func encode(_ cache: KVCache, precision: ExactPrecision) throws(StoreError) -> [UInt8] {
        let first = cache.positions.first ?? 0
        for (i, p) in cache.positions.enumerated() where p != first + i {
            throw .mismatch("positions are not contiguous at token \(i)")
        }
        var half: Bool
        switch precision {
        case .fp16: half = true
        case .fp32: half = false
        case .automatic:
            half = true
            for stream in [cache.keys, cache.values] where half {
                stream.withUnsafeBufferPointer { b in
                    for v in b where Float(Float16(v)) != v { half = false; break }
                }
            }
        }
        let g = cache.geometry
        let n = cache.tokenCount * g.featuresPerToken
        var s = ByteWriter(capacity: 128 + 2 * n * (half ? 2 : 4))
        s.raw(magic)
        s.u8(half ? 16 : 32)
        for v in [g.layers, g.kvHeads, g.headDim, cache.tokenCount] { s.u32(UInt32(v)) }
        s.u64(UInt64(first))
        s.string(cache.rope.layout.rawValue)
        s.f64(cache.rope.theta)
        s.u32(UInt32(cache.rope.rotaryDims))
        s.string(cache.model)
        for stream in [cache.keys, cache.values] {
            stream.withUnsafeBufferPointer { b in
                if half {
                    var out = [UInt16](repeating: 0, count: b.count)
                    for i in 0..<b.count { out[i] = Float16(b[i]).bitPattern.littleEndian }
                    out.withUnsafeBytes { s.raw($0) }
                } else {
                    var out = [UInt32](repeating: 0, count: b.count)
                    for i in 0..<b.count { out[i] = b[i].bitPattern.littleEndian }
                    out.withUnsafeBytes { s.raw($0) }
                }
            }
        }
        return s.bytes
    }

    /// Decodes bytes made by ``encode(_:precision:)``.
    public static func decode(_ bytes: [UInt8]) throws(StoreError) -> KVCache {
        var r = ByteReader(bytes)
        do {
            guard try r.raw(8) == magic else { throw StoreError.invalidEntry("not exact rows") }
            let bits = Int(try r.u8())
            guard bits == 16 || bits == 32 else { throw StoreError.invalidEntry("precision \(bits) bits") }
            let layers = Int(try r.u32()), heads = Int(try r.u32()), dim = Int(try r.u32()), tokens = Int(try r.u32())
            let first = Int(try r.u64())
            guard let layout = RoPELayout(rawValue: try r.string()) else { throw StoreError.invalidEntry("RoPE layout") }
            let theta = try r.f64()
            let rotary = Int(try r.u32())
            let model = try r.string()
            let g = KVGeometry(layers: layers, kvHeads: heads, headDim: dim)
            guard layers > 0, heads > 0, dim > 0, g.featuresPerToken < 1 << 24, first < 1 << 40 else {
                throw StoreError.invalidEntry("geometry \(g)")
            }
            let n = tokens * g.featuresPerToken
            guard r.remaining == 2 * n * bits / 8 else {
                throw StoreError.invalidEntry("exact rows hold \(r.remaining) bytes, expected \(2 * n * bits / 8)")
            }
            var streams: [[Float]] = []
            for _ in 0..<2 {
                let range = try r.take(n * bits / 8)
                let out = [Float](unsafeUninitializedCapacity: n) { buf, count in
                    bytes.withUnsafeBytes { raw in
                        let base = raw.baseAddress! + range.lowerBound
                        if bits == 16 {
                            for i in 0..<n {
                                buf[i] = Float(Float16(bitPattern: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
                            }
                        } else {
                            for i in 0..<n {
                                buf[i] = Float(bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                            }
                        }
                    }
                    count = n
                }
                streams.append(out)
            }
            do {
                let cache = try KVCache(geometry: g, rope: RoPE(layout: layout, theta: theta, rotaryDims: rotary),
                                        positions: Array(first..<(first + tokens)), keys: streams[0], values: streams[1],
                                        model: model)
                try cache.validateFinite()
                return cache
            } catch { throw StoreError.invalidEntry(error.description) }
        } catch let e as StoreError {
            throw e
        } catch {
            throw .invalidEntry("exact rows are truncated")
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
}
