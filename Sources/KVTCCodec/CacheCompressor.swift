import KVTCCache

/// Byte accounting of one compressed cache.
///
/// Ratios compare fp16 bytes (2 bytes per key and value element) with every byte stored.
/// Bytes not attributable to the protected tokens (codes, shifts, scales, headers, section
/// table, checksums, positions) are all charged to the compressed tokens.
public struct CompressionReport: Codable, Sendable, Equatable {
    /// Name of the method.
    public var method: String
    /// Tokens in the cache.
    public var tokens: Int
    /// Tokens that were lossily compressed.
    public var compressedTokens: Int
    /// Nominal ratio of the plan (budget), if the method has one.
    public var nominalRatio: Double?
    /// fp16 bytes of the compressed tokens' keys and values.
    public var compressedTokensFP16Bytes: Int
    /// fp16 bytes of the whole cache.
    public var cacheFP16Bytes: Int
    /// Bytes charged to the compressed tokens before entropy coding.
    public var compressedTokensBytesBeforeEntropy: Int
    /// Bytes charged to the compressed tokens as stored.
    public var compressedTokensBytes: Int
    /// Size of the whole blob.
    public var totalBytes: Int
    /// Compressed tokens stored for the full-context layers only, because no sliding window
    /// can see them any more (`nil` when none). Their dropped layers count in
    /// ``compressedTokensFP16Bytes``, so ``ratio`` includes the window saving.
    public var outOfWindowTokens: Int?

    /// Ratio over the compressed tokens before entropy coding.
    public var ratioBeforeEntropy: Double { Double(compressedTokensFP16Bytes) / Double(max(1, compressedTokensBytesBeforeEntropy)) }
    /// Ratio over the compressed tokens as stored (every byte counted).
    public var ratio: Double { Double(compressedTokensFP16Bytes) / Double(max(1, compressedTokensBytes)) }
    /// Ratio of the whole cache (protected tokens and headers included).
    public var wholeCacheRatio: Double { Double(cacheFP16Bytes) / Double(max(1, totalBytes)) }

    public init(method: String, tokens: Int, compressedTokens: Int, nominalRatio: Double?,
                compressedTokensFP16Bytes: Int, cacheFP16Bytes: Int, compressedTokensBytesBeforeEntropy: Int,
                compressedTokensBytes: Int, totalBytes: Int) {
        self.method = method
        self.tokens = tokens
        self.compressedTokens = compressedTokens
        self.nominalRatio = nominalRatio
        self.compressedTokensFP16Bytes = compressedTokensFP16Bytes
        self.cacheFP16Bytes = cacheFP16Bytes
        self.compressedTokensBytesBeforeEntropy = compressedTokensBytesBeforeEntropy
        self.compressedTokensBytes = compressedTokensBytes
        self.totalBytes = totalBytes
    }
}

/// A compressed cache: the bytes and what they hold.
public struct CompressedCache: Sendable {
    public var bytes: [UInt8]
    public var report: CompressionReport

    public init(bytes: [UInt8], report: CompressionReport) {
        self.bytes = bytes
        self.report = report
    }
}

/// Anything that turns a cache into bytes and back: KVTC and every baseline, so that the
/// harness, the store and the benchmarks treat them alike.
public protocol CacheCompressor: Sendable {
    /// Short method name (`kvtc`, `kivi2`, ...).
    var method: String { get }
    /// Setting label (`16x`, `group 32`, ...).
    var setting: String { get }
    /// Compresses a cache.
    func compress(_ cache: KVCache) throws -> CompressedCache
    /// Restores a cache from bytes this compressor produced.
    func decompress(_ bytes: [UInt8]) throws -> KVCache
    /// Restores the tokens of bytes this compressor produced and appends them to `cache`
    /// (same geometry and RoPE), writing straight into its storage where the method can.
    /// On error `cache` is unchanged.
    func decompress(_ bytes: [UInt8], appendingTo cache: inout KVCache) throws
    /// Restores consecutive pieces of one sequence (each made by this compressor) and
    /// appends their tokens to `cache` in order, sharing work across pieces where the
    /// method can. On error `cache` is unchanged and the error names the first bad piece.
    func decompress(sequence pieces: [[UInt8]], appendingTo cache: inout KVCache) throws(SequenceDecodingError)
    /// What `bytes` declare they hold, read from their header alone (nothing inflated or
    /// decoded), so a reader can refuse a foreign or oversized piece before paying for it;
    /// `nil` when the method cannot tell without decoding.
    func shape(of bytes: [UInt8]) throws -> CompressedShape?
}

/// What a compressed piece declares it holds: checked against what the reader expects
/// before any section is inflated.
public struct CompressedShape: Sendable, Equatable {
    /// Layers, kv heads and head dimension.
    public var geometry: KVGeometry
    /// The RoPE the keys carry.
    public var rope: RoPE
    /// Every layer's rotation and window, when the layers differ; `nil` when every layer
    /// uses ``rope`` over the whole context.
    public var layerAttention: [LayerAttention]?
    /// Tokens held.
    public var tokens: Int
    /// Position of the first token.
    public var firstPosition: Int?

    public init(geometry: KVGeometry, rope: RoPE, layerAttention: [LayerAttention]? = nil, tokens: Int,
                firstPosition: Int? = nil) {
        self.geometry = geometry
        self.rope = rope
        self.layerAttention = layerAttention
        self.tokens = tokens
        self.firstPosition = firstPosition
    }
}

/// A piece of a sequence given to ``CacheCompressor/decompress(sequence:appendingTo:)``
/// could not be decoded.
public struct SequenceDecodingError: Error, CustomStringConvertible {
    /// Index of the first piece that failed.
    public var index: Int
    /// Why it failed.
    public var underlying: any Error

    public init(index: Int, underlying: any Error) {
        self.index = index
        self.underlying = underlying
    }

    public var description: String { "piece \(index): \(underlying)" }
}

extension CacheCompressor {
    /// Unknown without decoding.
    public func shape(of bytes: [UInt8]) throws -> CompressedShape? { nil }

    /// Decodes into a cache of its own and appends it.
    public func decompress(_ bytes: [UInt8], appendingTo cache: inout KVCache) throws {
        try cache.append(contentsOf: try decompress(bytes))
    }

    /// Decodes the pieces one by one.
    public func decompress(sequence pieces: [[UInt8]], appendingTo cache: inout KVCache) throws(SequenceDecodingError) {
        let start = cache.tokenCount
        for (i, piece) in pieces.enumerated() {
            do { try decompress(piece, appendingTo: &cache) } catch {
                cache.truncate(to: start)
                throw SequenceDecodingError(index: i, underlying: error)
            }
        }
    }
}
