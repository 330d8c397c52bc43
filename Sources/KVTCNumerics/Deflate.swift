import CDeflate

/// Errors from the DEFLATE coder.
public enum DeflateError: Error, Equatable, CustomStringConvertible {
    /// The compressed stream is not valid DEFLATE or does not decode to the expected size.
    case corruptStream
    /// The coder could not be created (out of memory or an invalid level).
    case unavailable

    public var description: String {
        switch self {
        case .corruptStream: return "DEFLATE stream is corrupt or has the wrong length"
        case .unavailable: return "DEFLATE coder unavailable"
        }
    }
}

/// Raw DEFLATE (RFC 1951) and CRC-32 through libdeflate.
public enum Deflate {
    /// Compresses `input` at `level` (0...12, libdeflate's scale).
    public static func compress(_ input: UnsafeRawBufferPointer, level: Int) throws(DeflateError) -> [UInt8] {
        guard let c = libdeflate_alloc_compressor(Int32(level)) else { throw .unavailable }
        defer { libdeflate_free_compressor(c) }
        let bound = libdeflate_deflate_compress_bound(c, input.count)
        var out = [UInt8](repeating: 0, count: max(bound, 16))
        let n = out.withUnsafeMutableBytes { o in
            libdeflate_deflate_compress(c, input.baseAddress, input.count, o.baseAddress, o.count)
        }
        guard n > 0 || input.isEmpty else { throw .unavailable }
        out.removeSubrange(n...)
        return out
    }

    /// Compresses a byte array.
    public static func compress(_ input: [UInt8], level: Int) throws(DeflateError) -> [UInt8] {
        do {
            return try input.withUnsafeBytes { try compress($0, level: level) }
        } catch let e as DeflateError { throw e } catch { throw .unavailable }
    }

    /// Decompresses a stream that must inflate to exactly `count` bytes into `output`.
    public static func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws(DeflateError) {
        guard let d = libdeflate_alloc_decompressor() else { throw .unavailable }
        defer { libdeflate_free_decompressor(d) }
        var actual = 0
        let r = libdeflate_deflate_decompress(d, input.baseAddress, input.count,
                                              output.baseAddress, output.count, &actual)
        guard r == LIBDEFLATE_SUCCESS, actual == output.count else { throw .corruptStream }
    }

    /// Inflates `input` into exactly `output.count` bytes; false if the stream is corrupt or
    /// has another length.
    public static func inflate(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        do { try decompress(input, into: output); return true } catch { return false }
    }

    /// Decompresses a stream that must inflate to exactly `count` bytes.
    public static func decompress(_ input: [UInt8], count: Int) throws(DeflateError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var failure: DeflateError?
        input.withUnsafeBytes { i in
            out.withUnsafeMutableBytes { o in
                do throws(DeflateError) { try decompress(i, into: o) } catch { failure = error }
            }
        }
        if let failure { throw failure }
        return out
    }

    /// CRC-32 (the zlib/PNG polynomial) of `bytes`, continuing from `initial`.
    public static func crc32(_ bytes: UnsafeRawBufferPointer, initial: UInt32 = 0) -> UInt32 {
        libdeflate_crc32(initial, bytes.baseAddress, bytes.count)
    }

    /// CRC-32 of a byte array.
    public static func crc32(_ bytes: [UInt8], initial: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { crc32($0, initial: initial) }
    }
}
