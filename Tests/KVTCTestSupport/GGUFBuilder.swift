import Foundation

/// Builds small GGUF files byte by byte.
public struct GGUFBuilder {
    public var bytes: [UInt8] = []
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }
    public mutating func pad(to alignment: Int) { while bytes.count % alignment != 0 { bytes.append(0) } }

    public init() {}

    /// A valid version-3 file: metadata of many types and two tensors (F32 [4], Q8_0 [32 x 2]).
    public static func sample(version: UInt32 = 3, architecture: String = "llama") -> [UInt8] {
        var b = GGUFBuilder()
        b.u32(0x4655_4747); b.u32(version)
        b.u64(2) // tensors
        b.u64(6) // metadata
        b.str("general.architecture"); b.u32(8); b.str(architecture)
        b.str("u8"); b.u32(0); b.bytes.append(200)
        b.str("i64"); b.u32(11); b.u64(UInt64(bitPattern: -5))
        b.str("f32"); b.u32(6); b.u32(Float(2.5).bitPattern)
        b.str("flag"); b.u32(7); b.bytes.append(1)
        // Array of arrays of strings: [["a", "bc"], []]
        b.str("nested"); b.u32(9); b.u32(9); b.u64(2)
        b.u32(8); b.u64(2); b.str("a"); b.str("bc")
        b.u32(8); b.u64(0)
        // Tensors.
        b.str("vec"); b.u32(1); b.u64(4); b.u32(0); b.u64(0)
        b.str("mat"); b.u32(2); b.u64(32); b.u64(2); b.u32(8); b.u64(32)
        b.pad(to: 32)
        for v: Float in [1, -2, 3.5, 0] { b.u32(v.bitPattern) }
        b.pad(to: 32)
        for row in 0..<2 {
            b.bytes += [0x00, 0x3C] // d = 1
            b.bytes += (0..<32).map { UInt8(bitPattern: Int8($0 - 16 + row)) }
        }
        return b.bytes
    }
}

@discardableResult
public func withTemporaryFile<R>(_ bytes: [UInt8], _ body: (String) throws -> R) throws -> R {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("kvtc-gguf-\(UUID().uuidString).gguf").path
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}
