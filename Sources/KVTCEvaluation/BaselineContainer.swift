import Foundation
import KVTCCache
import KVTCCodec
import KVTCNumerics

/// Errors of the baseline codecs.
public enum BaselineError: Error, Equatable, CustomStringConvertible {
    case notABaselineBlob
    case corrupt(String)
    case wrongMethod(expected: String, found: String)
    case nothingToCompress(tokens: Int)
    case invalidCache(String)

    public var description: String {
        switch self {
        case .notABaselineBlob: return "not a baseline blob"
        case .corrupt(let m): return "baseline blob is corrupt: \(m)"
        case .wrongMethod(let e, let f): return "blob was made by \(f), not \(e)"
        case .nothingToCompress(let t): return "all \(t) tokens are protected: nothing to compress"
        case .invalidCache(let m): return "invalid cache: \(m)"
        }
    }
}

/// A method that encodes only the compressible middle of a cache; the protected tokens
/// (sinks and recent window) are handled identically for every method by ``ProtectedCompressor``.
public protocol MiddleCodec: Sendable {
    var method: String { get }
    var setting: String { get }
    /// Nominal ratio, when the method has a budget.
    var nominalRatio: Double? { get }
    /// Encodes the middle tokens. `context` is the whole cache (some methods look at it).
    func encode(middle: KVCache, context: KVCache) throws -> [UInt8]
    /// Decodes the middle tokens; eviction methods return fewer tokens than were given.
    /// `template` carries the geometry, RoPE and positions of the original middle.
    func decode(_ bytes: [UInt8], template: MiddleTemplate) throws -> KVCache
}

/// What a middle decoder knows before reading its bytes.
public struct MiddleTemplate: Sendable {
    public var geometry: KVGeometry
    public var rope: RoPE
    /// Every layer's rotation and window.
    public var layerAttention: [LayerAttention]
    public var positions: [Int]
    public var model: String
}

/// Wraps a ``MiddleCodec`` with the shared protected-token policy and a checksummed
/// container, and accounts for every byte.
///
///     magic "KVTCBASE" | u32 header length | JSON header | middle payload | exact tokens | CRC-32
public struct ProtectedCompressor<Codec: MiddleCodec>: CacheCompressor {
    public let codec: Codec
    public let protection: Protection

    public var method: String { codec.method }
    public var setting: String { codec.setting }

    public init(_ codec: Codec, protection: Protection = .standard) {
        self.codec = codec
        self.protection = protection
    }

    struct Header: Codable {
        var method: String
        var setting: String
        var geometry: KVGeometry
        var rope: RoPE
        /// Every layer's rotation and window, present only when they differ.
        var layerAttention: [LayerAttention]?
        var tokens: Int
        /// Positions are `firstPosition + i` unless listed explicitly.
        var firstPosition: Int
        var explicitPositions: [Int]?
        var model: String

        var positions: [Int] { explicitPositions ?? Array(firstPosition..<(firstPosition + tokens)) }
        var lead: Int
        var trail: Int
        var middleBytes: Int
        var exactBytes: Int
    }

    static var magic: [UInt8] { Array("KVTCBASE".utf8) }
    /// How the protected tokens are stored: fp16, as serving engines hold caches.
    static var exactEncoding: ExactRowEncoding { .fp16 }

    public func compress(_ cache: KVCache) throws -> CompressedCache {
        do { try cache.validateFinite() } catch { throw BaselineError.invalidCache("\(error)") }
        let (lead, trail) = protection.exactTokens(of: cache)
        let n = cache.tokenCount - lead - trail
        guard n > 0 else { throw BaselineError.nothingToCompress(tokens: cache.tokenCount) }
        let middle = try cache.tokens(lead..<(lead + n))
        let payload = try codec.encode(middle: middle, context: cache)
        let p = cache.geometry.featuresPerToken
        // Exact tokens in fp16 for every method: sinks' keys, their values, then the recent ones'.
        var w = ByteWriter(capacity: Self.exactEncoding.byteCount(values: 2 * (lead + trail) * p))
        for r in [0..<(lead * p), ((lead + n) * p)..<(cache.tokenCount * p)] {
            for stream in [cache.keys, cache.values] { Self.exactEncoding.append(stream[r], to: &w) }
        }
        let exact = w.bytes
        let header = Header(method: codec.method, setting: codec.setting, geometry: cache.geometry, rope: cache.rope,
                            layerAttention: cache.isUniform ? nil : cache.layerAttention, tokens: cache.tokenCount, firstPosition: cache.positions.first ?? 0,
                            explicitPositions: cache.firstNonConsecutivePosition == nil ? nil : cache.positions,
                            model: cache.model, lead: lead, trail: trail,
                            middleBytes: payload.count, exactBytes: exact.count)
        let json = Array(try JSONEncoder().encode(header))
        var out = Self.magic
        var n32 = UInt32(json.count).littleEndian
        withUnsafeBytes(of: &n32) { out.append(contentsOf: $0) }
        out += json
        out += payload
        out += exact
        var crc = Deflate.crc32(out).littleEndian
        withUnsafeBytes(of: &crc) { out.append(contentsOf: $0) }
        let report = CompressionReport(
            method: codec.method, tokens: cache.tokenCount, compressedTokens: n, nominalRatio: codec.nominalRatio,
            compressedTokensFP16Bytes: 4 * n * p, cacheFP16Bytes: cache.fp16Bytes,
            compressedTokensBytesBeforeEntropy: out.count - exact.count, compressedTokensBytes: out.count - exact.count,
            totalBytes: out.count)
        return CompressedCache(bytes: out, report: report)
    }

    public func decompress(_ bytes: [UInt8]) throws -> KVCache {
        do { return try decode(bytes) } catch is ByteReaderOutOfBounds { throw BaselineError.corrupt("payload ends early or has trailing bytes") }
    }

    private func decode(_ bytes: [UInt8]) throws -> KVCache {
        guard bytes.count >= 16, Array(bytes[0..<8]) == Self.magic else { throw BaselineError.notABaselineBlob }
        let stored = bytes[(bytes.count - 4)...].enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
        guard Deflate.crc32(Array(bytes[0..<(bytes.count - 4)])) == stored else { throw BaselineError.corrupt("checksum mismatch") }
        let hl = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
        guard hl <= bytes.count - 16 else { throw BaselineError.corrupt("header length") }
        let header: Header
        do { header = try JSONDecoder().decode(Header.self, from: Data(bytes[12..<(12 + hl)])) } catch {
            throw BaselineError.corrupt("header")
        }
        guard header.tokens >= 0, header.tokens < 1 << 26, header.explicitPositions.map({ $0.count == header.tokens }) ?? true else {
            throw BaselineError.corrupt("token count")
        }
        guard header.method == codec.method else { throw BaselineError.wrongMethod(expected: codec.method, found: header.method) }
        let p = header.geometry.featuresPerToken
        let exactTokens = header.lead + header.trail
        guard header.middleBytes >= 0, header.exactBytes == 2 * Self.exactEncoding.byteCount(values: exactTokens * p),
              12 + hl + header.middleBytes + header.exactBytes + 4 == bytes.count,
              header.lead + header.trail < header.positions.count else {
            throw BaselineError.corrupt("section lengths")
        }
        let start = 12 + hl
        let payload = Array(bytes[start..<(start + header.middleBytes)])
        let n = header.positions.count - exactTokens
        let attention = header.layerAttention ?? LayerAttention.uniform(header.rope, layers: header.geometry.layers)
        guard attention.count == header.geometry.layers else { throw BaselineError.corrupt("per-layer attention") }
        let template = MiddleTemplate(geometry: header.geometry, rope: header.rope, layerAttention: attention,
                                      positions: Array(header.positions[header.lead..<(header.lead + n)]), model: header.model)
        let middle = try codec.decode(payload, template: template)
        var e = start + header.middleBytes
        func exactRows(_ count: Int) -> [Float] {
            let length = Self.exactEncoding.byteCount(values: count * p)
            defer { e += length }
            return Self.exactEncoding.decode(bytes[e..<(e + length)])
        }
        let leadK = exactRows(header.lead), leadV = exactRows(header.lead)
        let trailK = exactRows(header.trail), trailV = exactRows(header.trail)
        let positions = Array(header.positions[0..<header.lead]) + middle.positions
            + Array(header.positions[(header.lead + n)...])
        do {
            return try KVCache(geometry: header.geometry, rope: header.rope, layerAttention: attention, positions: positions,
                               keys: leadK + middle.keys + trailK, values: leadV + middle.values + trailV, model: header.model)
        } catch { throw BaselineError.corrupt("\(error)") }
    }
}
