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
}
