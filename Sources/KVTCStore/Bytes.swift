import Foundation

/// Appends little-endian fields to a byte buffer.
struct ByteSink {
    var bytes: [UInt8] = []

    init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func f64(_ v: Double) { u64(v.bitPattern) }
    mutating func raw<C: Collection>(_ v: C) where C.Element == UInt8 { bytes.append(contentsOf: v) }
    mutating func string(_ s: String) {
        let u = Array(s.utf8)
        u32(UInt32(u.count))
        bytes.append(contentsOf: u)
    }
}

/// Reads little-endian fields with bounds checks; any read past the end throws.
struct ByteSource {
    let bytes: [UInt8]
    private(set) var offset: Int

    struct OutOfBounds: Error {}

    init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    var remaining: Int { bytes.count - offset }

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
    mutating func u32() throws(OutOfBounds) -> UInt32 { try load(UInt32.self) }
    mutating func u64() throws(OutOfBounds) -> UInt64 { try load(UInt64.self) }
    mutating func f64() throws(OutOfBounds) -> Double { Double(bitPattern: try u64()) }
    mutating func raw(_ n: Int) throws(OutOfBounds) -> [UInt8] { Array(bytes[try take(n)]) }
    mutating func string(maxLength: Int = 1 << 16) throws(OutOfBounds) -> String {
        let n = Int(try u32())
        guard n <= maxLength else { throw OutOfBounds() }
        return String(decoding: bytes[try take(n)], as: UTF8.self)
    }
}

/// Lowercase hexadecimal of bytes.
func hexString<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// A value guarded by a lock, for counters shared between tasks.
final class Locked<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }

    var current: Value { withLock { $0 } }
}
