/// Appends little-endian fields to a byte buffer.
public struct ByteWriter: Sendable {
    public var bytes: [UInt8] = []

    public init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func int(_ v: Int) { u64(UInt64(bitPattern: Int64(v))) }
    public mutating func f64(_ v: Double) { u64(v.bitPattern) }
    public mutating func f32(_ v: Float) { u32(v.bitPattern) }
    public mutating func raw<C: Collection>(_ v: C) where C.Element == UInt8 { bytes.append(contentsOf: v) }
    /// A non-negative integer as an unsigned LEB128 varint (7 bits per byte, low first).
    public mutating func varint(_ v: Int) {
        precondition(v >= 0)
        var x = UInt64(v)
        while x >= 0x80 { bytes.append(UInt8(x & 0x7F) | 0x80); x >>= 7 }
        bytes.append(UInt8(x))
    }
    public mutating func string(_ s: String) {
        let u = Array(s.utf8)
        u32(UInt32(u.count))
        bytes.append(contentsOf: u)
    }
    public mutating func floats(_ v: [Float]) {
        u64(UInt64(v.count))
        v.withUnsafeBytes { bytes.append(contentsOf: $0) }
    }
}

/// A read went past the end of its bytes, or a value was out of its allowed range.
public struct ByteReaderOutOfBounds: Error, Equatable, Sendable {
    public init() {}
}

/// Reads little-endian fields with bounds checks; every read past the end throws.
///
/// One reader serves every binary format of the project: over `[UInt8]` for blobs, profiles
/// and store entries, and over a memory-mapped file's `UnsafeRawBufferPointer` for GGUF.
public struct ByteReader<Bytes: RandomAccessCollection> where Bytes.Element == UInt8, Bytes.Index == Int {
    public let bytes: Bytes
    public private(set) var offset: Int
    public let end: Int

    /// A read went past the end, or a value was out of its allowed range.
    public typealias OutOfBounds = ByteReaderOutOfBounds

    /// Reads `range` of `bytes` (all of them by default).
    public init(_ bytes: Bytes, range: Range<Int>? = nil) {
        self.bytes = bytes
        self.offset = range?.lowerBound ?? bytes.startIndex
        self.end = range?.upperBound ?? bytes.endIndex
    }

    /// Reads from `offset` to the end.
    public init(_ bytes: Bytes, offset: Int) {
        self.init(bytes, range: offset..<bytes.endIndex)
    }

    public var remaining: Int { end - offset }

    /// Throws unless every byte was read.
    public func finish() throws(OutOfBounds) { guard remaining == 0 else { throw OutOfBounds() } }

    public mutating func take(_ n: Int) throws(OutOfBounds) -> Range<Int> {
        guard n >= 0, n <= remaining else { throw OutOfBounds() }
        defer { offset += n }
        return offset..<(offset + n)
    }

    private mutating func load<T: FixedWidthInteger>(_: T.Type) throws(OutOfBounds) -> T {
        let r = try take(MemoryLayout<T>.size)
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(truncatingIfNeeded: bytes[r.lowerBound + i]) << (8 * i) }
        return v
    }

    public mutating func u8() throws(OutOfBounds) -> UInt8 { try load(UInt8.self) }
    public mutating func u16() throws(OutOfBounds) -> UInt16 { try load(UInt16.self) }
    public mutating func u32() throws(OutOfBounds) -> UInt32 { try load(UInt32.self) }
    public mutating func u64() throws(OutOfBounds) -> UInt64 { try load(UInt64.self) }
    public mutating func f64() throws(OutOfBounds) -> Double { Double(bitPattern: try u64()) }
    public mutating func f32() throws(OutOfBounds) -> Float { Float(bitPattern: try u32()) }

    /// A non-negative integer no larger than `limit`.
    public mutating func int(max limit: Int) throws(OutOfBounds) -> Int {
        let v = Int64(bitPattern: try u64())
        guard v >= 0, v <= Int64(limit) else { throw OutOfBounds() }
        return Int(v)
    }

    /// An unsigned LEB128 varint no larger than `limit` (at most 9 bytes, no padding bytes).
    public mutating func varint(max limit: Int) throws(OutOfBounds) -> Int {
        var v: UInt64 = 0
        for i in 0..<9 {
            let b = try u8()
            v |= UInt64(b & 0x7F) << (7 * UInt64(i))
            if b & 0x80 == 0 {
                guard i == 0 || b != 0, v <= UInt64(limit) else { throw OutOfBounds() }
                return Int(v)
            }
        }
        throw OutOfBounds()
    }

    /// A string of `u32` length and UTF-8 bytes (invalid sequences replaced).
    public mutating func string(maxLength: Int = 1 << 20) throws(OutOfBounds) -> String {
        let n = Int(try u32())
        guard n <= maxLength else { throw OutOfBounds() }
        let r = try take(n)
        return String(decoding: bytes[r], as: UTF8.self)
    }

    public mutating func raw(_ n: Int) throws(OutOfBounds) -> [UInt8] { Array(bytes[try take(n)]) }

    public mutating func floats(maxCount: Int) throws(OutOfBounds) -> [Float] {
        let n = try int(max: maxCount)
        let r = try take(n * 4)
        let base = r.lowerBound - bytes.startIndex
        return [Float](unsafeUninitializedCapacity: n) { buf, count in
            let copied: Void? = bytes.withContiguousStorageIfAvailable { storage in
                let raw = UnsafeRawBufferPointer(storage)
                for i in 0..<n {
                    buf[i] = Float(bitPattern: raw.loadUnaligned(fromByteOffset: base + 4 * i, as: UInt32.self).littleEndian)
                }
            }
            if copied == nil {
                for i in 0..<n {
                    var bits: UInt32 = 0
                    for j in 0..<4 { bits |= UInt32(bytes[r.lowerBound + 4 * i + j]) << (8 * j) }
                    buf[i] = Float(bitPattern: bits)
                }
            }
            count = n
        }
    }
}

extension ByteReader: Sendable where Bytes: Sendable {}

/// Lowercase hexadecimal of bytes.
public func hexString<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
}
