import CZstd

/// Zstandard (RFC 8878) frames through libzstd.
public enum Zstd {
    /// Compresses `input` at `level` (1...19; libzstd's scale) into one frame that records
    /// its content size.
    public static func compress(_ input: UnsafeRawBufferPointer, level: Int) throws(DeflateError) -> [UInt8] {
        guard let c = ZSTD_createCCtx() else { throw .unavailable }
        defer { ZSTD_freeCCtx(c) }
        var out = [UInt8](repeating: 0, count: max(ZSTD_compressBound(input.count), 16))
        let n = out.withUnsafeMutableBytes { o in
            ZSTD_compressCCtx(c, o.baseAddress, o.count, input.baseAddress, input.count, Int32(level))
        }
        guard ZSTD_isError(n) == 0 else { throw .unavailable }
        out.removeSubrange(n...)
        return out
    }

    /// Decompresses one frame that must hold exactly `output.count` bytes into `output`;
    /// false if the frame is corrupt, has trailing bytes or another length.
    public static func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        let declared = ZSTD_getFrameContentSize(input.baseAddress, input.count)
        guard declared == UInt64(output.count) else { return false }
        guard let d = ZSTD_createDCtx() else { return false }
        defer { ZSTD_freeDCtx(d) }
        let n = ZSTD_decompressDCtx(d, output.baseAddress, output.count, input.baseAddress, input.count)
        return ZSTD_isError(n) == 0 && n == output.count
    }
}

/// The lossless coders a blob's chunks may be stored with (the blob records each chunk's).
public enum LosslessCoder: Hashable, Sendable, CustomStringConvertible {
    /// Raw DEFLATE through libdeflate at a level 1...12.
    case deflate(level: Int)
    /// A Zstandard frame at a level 1...19.
    case zstd(level: Int)

    /// The identifier a chunk table stores (0 is reserved for bytes stored as they are).
    public var identifier: UInt8 {
        switch self {
        case .deflate: return 1
        case .zstd: return 2
        }
    }

    public var description: String {
        switch self {
        case .deflate(let l): return "deflate-\(l)"
        case .zstd(let l): return "zstd-\(l)"
        }
    }

    /// Parses `deflate-N` or `zstd-N`.
    public init?(_ text: String) {
        let parts = text.split(separator: "-")
        guard parts.count == 2, let level = Int(parts[1]) else { return nil }
        switch parts[0] {
        case "deflate" where (1...12).contains(level): self = .deflate(level: level)
        case "zstd" where (1...19).contains(level): self = .zstd(level: level)
        default: return nil
        }
    }

    /// Codes `input`; nil when the coder fails (the caller then stores the bytes as they are).
    public func encode(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        switch self {
        case .deflate(let l): return try? Deflate.compress(input, level: l)
        case .zstd(let l): return try? Zstd.compress(input, level: l)
        }
    }

    /// Decodes a chunk stored with the coder `identifier` into exactly `output.count` bytes;
    /// false for an unknown identifier or a corrupt chunk.
    public static func decode(identifier: UInt8, _ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        switch identifier {
        case 1: return Deflate.inflate(input, into: output)
        case 2: return Zstd.decompress(input, into: output)
        default: return false
        }
    }
}
