import KVTCNumerics
import Crypto

/// An entry as tiers outside the process hold it (a disk tier's file, a Redis tier's
/// value): a fixed header, then the value.
///
/// Layout: magic `KVTCDSK1` (8) | key (32) | value length u64 | SHA-256 over key, length
/// and value (32) | value. It is served only if its magic, key, length and checksum all
/// verify, so bytes stored under another key, truncated or altered are never returned.
public enum SealedEntry {
    public static let magic = Array("KVTCDSK1".utf8)
    /// Bytes before the value.
    public static let headerSize = 80

    static func checksum(key: StoreKey, value: [UInt8]) -> [UInt8] {
        var h = SHA256()
        h.update(data: key.bytes)
        withUnsafeBytes(of: UInt64(value.count).littleEndian) { h.update(bufferPointer: $0) }
        h.update(data: value)
        return Array(h.finalize())
    }

    /// `value` sealed under `key`.
    public static func encode(key: StoreKey, value: [UInt8]) -> [UInt8] {
        var s = ByteWriter(capacity: headerSize + value.count)
        s.raw(magic)
        s.raw(key.bytes)
        s.u64(UInt64(value.count))
        s.raw(checksum(key: key, value: value))
        s.raw(value)
        return s.bytes
    }

    /// Why sealed bytes were rejected.
    public enum Rejection: Error, Equatable {
        case header
        case wrongKey
        case length(expected: Int, actual: Int)
        case checksum
    }

    /// Checks a header (the first ``headerSize`` bytes) against the key and the total size.
    static func checkHeader(_ header: [UInt8], key: StoreKey, fileSize: Int) throws(Rejection) {
        guard header.count >= headerSize, Array(header[0..<8]) == magic else { throw .header }
        guard Array(header[8..<40]) == key.bytes else { throw .wrongKey }
        var r = ByteReader(header, offset: 40)
        let length = (try? r.u64()).map(Int.init) ?? -1
        guard length >= 0, headerSize + length == fileSize else {
            throw .length(expected: headerSize + max(0, length), actual: fileSize)
        }
    }

    /// Verifies sealed bytes and returns the value.
    public static func decode(_ bytes: [UInt8], key: StoreKey) throws(Rejection) -> [UInt8] {
        try checkHeader(bytes, key: key, fileSize: bytes.count)
        let value = Array(bytes[headerSize...])
        guard Array(bytes[48..<80]) == checksum(key: key, value: value) else { throw .checksum }
        return value
    }
}
