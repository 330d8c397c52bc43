import Foundation
import KVTCNumerics

/// Errors reading a GGUF file. Malformed or truncated input always ends in one of these,
/// never in a crash.
public enum GGUFError: Error, Equatable, CustomStringConvertible {
    /// The file could not be opened or mapped.
    case io(path: String, message: String)
    /// The file does not start with `GGUF`.
    case badMagic
    /// A GGUF version this reader does not handle (2 and 3 are supported).
    case unsupportedVersion(UInt32)
    /// The file ends before a structure that it declares.
    case truncated(what: String, offset: Int)
    /// A count, length or extent is implausible (larger than the file, or overflowing).
    case implausible(what: String, value: UInt64)
    /// A metadata value has a type code outside the GGUF specification.
    case unknownValueType(UInt32, key: String)
    /// A string is not valid UTF-8.
    case invalidString(offset: Int)
    /// A tensor uses a ggml type this reader cannot dequantize or size.
    case unsupportedTensorType(UInt32, tensor: String)
    /// A tensor's shape does not fit its type's block size, or its data lies outside the file.
    case badTensor(String, reason: String)
    /// `general.alignment` is zero or not a power of two.
    case badAlignment(UInt64)
    /// A tensor or metadata key the caller needs is absent.
    case missing(String)
    /// A metadata key has a different type than expected.
    case wrongType(key: String, expected: String)
    /// The same tensor or key name appears twice.
    case duplicate(String)

    public var description: String {
        switch self {
        case .io(let p, let m): return "cannot read \(p): \(m)"
        case .badMagic: return "not a GGUF file (bad magic)"
        case .unsupportedVersion(let v): return "unsupported GGUF version \(v) (expected 2 or 3)"
        case .truncated(let w, let o): return "GGUF file truncated: \(w) at byte \(o) runs past the end"
        case .implausible(let w, let v): return "GGUF file malformed: implausible \(w) \(v)"
        case .unknownValueType(let t, let k): return "GGUF metadata \(k) has unknown value type \(t)"
        case .invalidString(let o): return "GGUF string at byte \(o) is not valid UTF-8"
        case .unsupportedTensorType(let t, let n): return "tensor \(n) has unsupported ggml type \(t)"
        case .badTensor(let n, let r): return "tensor \(n) is malformed: \(r)"
        case .badAlignment(let a): return "GGUF general.alignment \(a) is not a power of two"
        case .missing(let k): return "GGUF file lacks \(k)"
        case .wrongType(let k, let e): return "GGUF metadata \(k) is not \(e)"
        case .duplicate(let n): return "GGUF file names \(n) twice"
        }
    }
}

/// A GGUF metadata value.
public indirect enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16)
    case uint32(UInt32), int32(Int32), uint64(UInt64), int64(Int64)
    case float32(Float), float64(Double), bool(Bool), string(String)
    /// An array; every element has the same GGUF type.
    case array([GGUFValue])

    /// The value as an integer, if it is any integer type (or a bool).
    public var intValue: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int64(let v): return Int(v)
        case .bool(let v): return v ? 1 : 0
        default: return nil
        }
    }

    /// The value as a floating-point number, if it is numeric.
    public var doubleValue: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return intValue.map(Double.init)
        }
    }

    /// The string, if this is a string.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The elements, if this is an array.
    public var arrayValue: [GGUFValue]? {
        if case .array(let a) = self { return a }
        return nil
    }
}

/// The ggml tensor element types (the codes used in GGUF files).
public enum GGMLType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8
    case q4_K = 12, q6_K = 14, bf16 = 30

    /// Elements per quantization block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0: return 32
        case .q4_K, .q6_K: return 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0: return 18
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q8_0: return 34
        case .q4_K: return 144
        case .q6_K: return 210
        }
    }

    public var description: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_0: return "Q8_0"
        case .q4_K: return "Q4_K"
        case .q6_K: return "Q6_K"
        }
    }
}

/// One entry of a GGUF tensor directory.
public struct GGUFTensorInfo: Sendable, Equatable {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    public let name: String
    /// Extents, fastest-varying first (ggml's `ne`): a weight of `ne = [in, out]` is
    /// `out` rows of `in` elements.
    public let dimensions: [Int]
    /// Element type.
    public let type: GGMLType
    /// Byte offset of the data from the start of the file (already resolved).
    public let fileOffset: Int
    /// Byte length of the data.
    public let byteCount: Int

    /// Total number of elements.
    public var elementCount: Int { dimensions.reduce(1, *) }
    /// Elements per row (`dimensions[0]`).
    public var rowLength: Int { dimensions.first ?? 1 }
    /// Number of rows (product of the other dimensions).
    public var rowCount: Int { dimensions.dropFirst().reduce(1, *) }
}

/// A parsed, memory-mapped GGUF file (versions 2 and 3, little-endian).
public final class GGUFFile: Sendable {
    /// The format version from the header.
    public let version: UInt32
    /// Every metadata key and value (``metadataKeys`` gives the file order).
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// The tensor directory in file order.
    public let tensors: [GGUFTensorInfo]
    /// Alignment of tensor data (`general.alignment`, default 32).
    public let alignment: Int
    /// Offset of the tensor data section.
    public let dataOffset: Int
    private let tensorIndex: [String: Int]
    private let file: MappedFile

    /// Opens and validates the GGUF file at `path` (memory-mapped, nothing copied).
    public convenience init(path: String) throws(GGUFError) {
        try self.init(mapped: MappedFile(path: path))
    }

    /// Parses a mapped file.
    public init(mapped: MappedFile) throws(GGUFError) {
        file = mapped
        var r = ByteReader(mapped.bytes)
        guard mapped.bytes.count >= 4, try r.u32("magic") == 0x4655_4747 else { throw .badMagic }
        let version = try r.u32("version")
        guard version == 2 || version == 3 else { throw .unsupportedVersion(version) }
        self.version = version
        let tensorCount = try r.u64("tensor count")
        let kvCount = try r.u64("metadata count")
        // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor
        // entry at least 8 + 4 + 8 + 4 + 8.
        guard kvCount <= UInt64(r.remaining / 13) else { throw .implausible(what: "metadata count", value: kvCount) }
        guard tensorCount <= UInt64(r.remaining / 32) else { throw .implausible(what: "tensor count", value: tensorCount) }

        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        keys.reserveCapacity(Int(kvCount))
        for _ in 0..<Int(kvCount) {
            let key = try r.string("metadata key")
            let type = try r.u32("metadata type of \(key)")
            let value = try r.value(type: type, key: key, depth: 0)
            guard metadata[key] == nil else { throw .duplicate(key) }
            metadata[key] = value
            keys.append(key)
        }
        self.metadata = metadata
        self.metadataKeys = keys

        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard let v = a.intValue, v > 0, v & (v - 1) == 0, v <= 1 << 20 else {
                throw .badAlignment(UInt64(truncatingIfNeeded: a.intValue ?? 0))
            }
            alignment = v
        }
        self.alignment = alignment

        struct Raw { var name: String; var dims: [Int]; var type: GGMLType; var offset: UInt64 }
        var raws: [Raw] = []
        raws.reserveCapacity(Int(tensorCount))
        for _ in 0..<Int(tensorCount) {
            let name = try r.string("tensor name")
            let nd = try r.u32("dimension count of \(name)")
            guard nd >= 1, nd <= 4 else { throw .badTensor(name, reason: "\(nd) dimensions") }
            var dims: [Int] = []
            var total: UInt64 = 1
            for _ in 0..<Int(nd) {
                let d = try r.u64("dimension of \(name)")
                guard d > 0, d <= UInt64(Int32.max) else { throw .badTensor(name, reason: "extent \(d)") }
                let (m, o) = total.multipliedReportingOverflow(by: d)
                guard !o, m <= UInt64(Int.max / 4) else { throw .badTensor(name, reason: "too many elements") }
                total = m
                dims.append(Int(d))
            }
            let code = try r.u32("type of \(name)")
            guard let type = GGMLType(rawValue: code) else { throw .unsupportedTensorType(code, tensor: name) }
            let offset = try r.u64("offset of \(name)")
            raws.append(Raw(name: name, dims: dims, type: type, offset: offset))
        }
        let headerEnd = r.offset
        let dataOffset = (headerEnd + alignment - 1) / alignment * alignment
        self.dataOffset = dataOffset
        let fileSize = mapped.bytes.count

        var infos: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        for raw in raws {
            guard raw.dims[0] % raw.type.blockSize == 0 else {
                throw .badTensor(raw.name, reason: "row of \(raw.dims[0]) is not a multiple of the \(raw.type) block size \(raw.type.blockSize)")
            }
            let rows = raw.dims.dropFirst().reduce(1, *)
            let bytes = (raw.dims[0] / raw.type.blockSize) * raw.type.blockBytes * rows
            guard raw.offset % UInt64(alignment) == 0 else {
                throw .badTensor(raw.name, reason: "offset \(raw.offset) not aligned to \(alignment)")
            }
            guard raw.offset <= UInt64(fileSize), dataOffset + Int(raw.offset) <= fileSize,
                  bytes <= fileSize - dataOffset - Int(raw.offset) else {
                throw .badTensor(raw.name, reason: "data (\(bytes) bytes at \(raw.offset)) lies outside the file")
            }
            guard index[raw.name] == nil else { throw .duplicate(raw.name) }
            index[raw.name] = infos.count
            infos.append(GGUFTensorInfo(name: raw.name, dimensions: raw.dims, type: raw.type,
                                        fileOffset: dataOffset + Int(raw.offset), byteCount: bytes))
        }
        self.tensors = infos
        self.tensorIndex = index
    }

    /// The path of the underlying file.
    public var path: String { file.path }

    /// The directory entry of tensor `name`, if present.
    public func tensor(named name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// The raw bytes of a tensor (valid while this object lives).
    public func rawBytes(of tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: file.bytes[tensor.fileOffset..<(tensor.fileOffset + tensor.byteCount)])
    }

    /// Tensor `name` dequantized to single precision, row-major (`rowCount x rowLength`).
    public func floats(_ name: String) throws(GGUFError) -> [Float] {
        guard let t = tensor(named: name) else { throw .missing("tensor \(name)") }
        return Dequantize.floats(rawBytes(of: t), type: t.type, count: t.elementCount)
    }

    /// An integer metadata value.
    public func int(_ key: String) throws(GGUFError) -> Int {
        guard let v = metadata[key] else { throw .missing(key) }
        guard let i = v.intValue else { throw .wrongType(key: key, expected: "an integer") }
        return i
    }

    /// A floating-point metadata value.
    public func double(_ key: String) throws(GGUFError) -> Double {
        guard let v = metadata[key] else { throw .missing(key) }
        guard let d = v.doubleValue else { throw .wrongType(key: key, expected: "a number") }
        return d
    }

    /// A string metadata value.
    public func string(_ key: String) throws(GGUFError) -> String {
        guard let v = metadata[key] else { throw .missing(key) }
        guard let s = v.stringValue else { throw .wrongType(key: key, expected: "a string") }
        return s
    }
}

/// GGUF's fields on the shared ``ByteReader``: every short read becomes a
/// ``GGUFError/truncated(what:offset:)`` naming the field.
extension ByteReader where Bytes == UnsafeRawBufferPointer {
    private mutating func field<T>(_ what: @autoclosure () -> String,
                                   _ read: (inout Self) throws(ByteReaderOutOfBounds) -> T) throws(GGUFError) -> T {
        let start = offset
        do { return try read(&self) } catch { throw .truncated(what: what(), offset: start) }
    }

    mutating func u8(_ what: @autoclosure () -> String) throws(GGUFError) -> UInt8 {
        try field(what()) { r throws(ByteReaderOutOfBounds) in try r.u8() }
    }
    mutating func u16(_ what: @autoclosure () -> String) throws(GGUFError) -> UInt16 {
        try field(what()) { r throws(ByteReaderOutOfBounds) in try r.u16() }
    }
    mutating func u32(_ what: @autoclosure () -> String) throws(GGUFError) -> UInt32 {
        try field(what()) { r throws(ByteReaderOutOfBounds) in try r.u32() }
    }
    mutating func u64(_ what: @autoclosure () -> String) throws(GGUFError) -> UInt64 {
        try field(what()) { r throws(ByteReaderOutOfBounds) in try r.u64() }
    }

    /// A GGUF string: a `u64` length and UTF-8 bytes, which must be valid.
    mutating func string(_ what: @autoclosure () -> String) throws(GGUFError) -> String {
        let start = offset
        let n = try u64(what())
        guard n <= UInt64(remaining) else { throw .truncated(what: what(), offset: start) }
        let range = try field(what()) { r throws(ByteReaderOutOfBounds) in try r.take(Int(n)) }
        guard let s = String(validating: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self) else {
            throw .invalidString(offset: start)
        }
        return s
    }

    /// Smallest encoded size of a value of `type` (for checking array counts before allocating).
    static func minimumSize(of type: UInt32) -> Int {
        switch type {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 10, 11, 12: return 8
        case 8: return 8
        case 9: return 12
        default: return 1
        }
    }

    mutating func value(type: UInt32, key: String, depth: Int) throws(GGUFError) -> GGUFValue {
        switch type {
        case 0: return .uint8(try u8(key))
        case 1: return .int8(Int8(bitPattern: try u8(key)))
        case 2: return .uint16(try u16(key))
        case 3: return .int16(Int16(bitPattern: try u16(key)))
        case 4: return .uint32(try u32(key))
        case 5: return .int32(Int32(bitPattern: try u32(key)))
        case 6: return .float32(Float(bitPattern: try u32(key)))
        case 7:
            let b = try u8(key)
            guard b <= 1 else { throw .implausible(what: "bool in \(key)", value: UInt64(b)) }
            return .bool(b == 1)
        case 8: return .string(try string(key))
        case 9:
            guard depth < 8 else { throw .implausible(what: "array nesting depth in \(key)", value: UInt64(depth)) }
            let elementType = try u32("array type of \(key)")
            guard elementType <= 12 else { throw .unknownValueType(elementType, key: key) }
            let count = try u64("array count of \(key)")
            guard count <= UInt64(remaining / Self.minimumSize(of: elementType)) else {
                throw .implausible(what: "array length of \(key)", value: count)
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(count))
            for _ in 0..<Int(count) {
                items.append(try value(type: elementType, key: key, depth: depth + 1))
            }
            return .array(items)
        case 10: return .uint64(try u64(key))
        case 11: return .int64(Int64(bitPattern: try u64(key)))
        case 12: return .float64(Double(bitPattern: try u64(key)))
        default: throw .unknownValueType(type, key: key)
        }
    }
}
