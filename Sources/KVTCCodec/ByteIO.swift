/// Appends little-endian fields to a byte buffer.
struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func int(_ v: Int) { u64(UInt64(bitPattern: Int64(v))) }
    mutating func f64(_ v: Double) { u64(v.bitPattern) }
    mutating func raw(_ v: [UInt8]) { bytes.append(contentsOf: v) }
    mutating func string(_ s: String) {
        let u = Array(s.utf8)
        u32(UInt32(u.count))
        bytes.append(contentsOf: u)
    }
    mutating func floats(_ v: [Float]) {
        u64(UInt64(v.count))
        v.withUnsafeBytes { bytes.append(contentsOf: $0) }
    }
}

/// Reads little-endian fields with bounds checks; every read past the end throws.
struct ByteReader {
    let bytes: [UInt8]
    private(set) var offset: Int
    let end: Int

    struct OutOfBounds: Error {}

    init(_ bytes: [UInt8], range: Range<Int>? = nil) {
        self.bytes = bytes
        self.offset = range?.lowerBound ?? 0
        self.end = range?.upperBound ?? bytes.count
    }

    var remaining: Int { end - offset }

    mutating func take(_ n: Int) throws(OutOfBounds) -> Range<Int> {
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

    mutating func u8() throws(OutOfBounds) -> UInt8 { try load(UInt8.self) }
    mutating func u16() throws(OutOfBounds) -> UInt16 { try load(UInt16.self) }
    mutating func u32() throws(OutOfBounds) -> UInt32 { try load(UInt32.self) }
    mutating func u64() throws(OutOfBounds) -> UInt64 { try load(UInt64.self) }
    mutating func f64() throws(OutOfBounds) -> Double { Double(bitPattern: try u64()) }

    /// A non-negative integer no larger than `limit`.
    mutating func int(max limit: Int) throws(OutOfBounds) -> Int {
        let v = Int64(bitPattern: try u64())
        guard v >= 0, v <= Int64(limit) else { throw OutOfBounds() }
        return Int(v)
    }

    mutating func string(maxLength: Int = 1 << 20) throws(OutOfBounds) -> String {
        let n = Int(try u32())
        guard n <= maxLength else { throw OutOfBounds() }
        let r = try take(n)
        return String(decoding: bytes[r], as: UTF8.self)
    }

    mutating func raw(_ n: Int) throws(OutOfBounds) -> [UInt8] { Array(bytes[try take(n)]) }

    mutating func floats(maxCount: Int) throws(OutOfBounds) -> [Float] {
        let n = try int(max: maxCount)
        let r = try take(n * 4)
        return [Float](unsafeUninitializedCapacity: n) { buf, count in
            bytes.withUnsafeBytes { raw in
                for i in 0..<n {
                    buf[i] = Float(bitPattern: raw.loadUnaligned(fromByteOffset: r.lowerBound + 4 * i, as: UInt32.self).littleEndian)
                }
            }
            count = n
        }
    }
}
