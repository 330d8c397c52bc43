import Foundation
import KVTCNumerics

/// Element types a tensor in a safetensors file can have (the ones this project reads).
public enum TensorDType: String, Codable, Sendable, CaseIterable {
    case f16 = "F16"
    case bf16 = "BF16"
    case f32 = "F32"
    case i64 = "I64"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f16, .bf16: return 2
        case .f32: return 4
        case .i64: return 8
        }
    }
}

/// Errors reading or writing a safetensors file.
public enum SafetensorsError: Error, Equatable, CustomStringConvertible {
    case truncated(String)
    case invalidHeader(String)
    case unsupportedDType(tensor: String, dtype: String)
    case badExtent(tensor: String, String)
    case missingTensor(String)
    case io(String)

    public var description: String {
        switch self {
        case .truncated(let m): return "file is truncated: \(m)"
        case .invalidHeader(let m): return "not a valid safetensors header: \(m)"
        case .unsupportedDType(let t, let d): return "tensor \(t) has unsupported dtype \(d)"
        case .badExtent(let t, let m): return "tensor \(t): \(m)"
        case .missingTensor(let t): return "tensor \(t) is missing"
        case .io(let m): return m
        }
    }
}

/// One tensor's entry in a safetensors header.
public struct SafetensorsEntry: Sendable, Equatable {
    public var dtype: TensorDType
    public var shape: [Int]
    /// Byte range within the data section.
    public var range: Range<Int>

    /// Number of elements.
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A parsed safetensors file (https://huggingface.co/docs/safetensors): an 8-byte
/// little-endian header length, a JSON header, then the tensors' bytes.
public struct SafetensorsFile: Sendable {
    /// Tensors by name.
    public let entries: [String: SafetensorsEntry]
    /// The `__metadata__` strings.
    public let metadata: [String: String]
    /// The whole file.
    public let bytes: [UInt8]
    /// Offset of the data section in ``bytes``.
    public let dataOffset: Int

    /// Largest header accepted (the format's own limit is 100 MB).
    public static let maximumHeaderSize = 100_000_000

    /// Parses and validates a file's bytes: every tensor must lie inside the data section,
    /// match its shape and dtype size, and not overlap another.
    public init(bytes: [UInt8]) throws(SafetensorsError) {
        guard bytes.count >= 8 else { throw .truncated("\(bytes.count) bytes, need at least 8") }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard n <= UInt64(Self.maximumHeaderSize) else { throw .invalidHeader("header length \(n) is implausible") }
        let headerLength = Int(n)
        guard bytes.count >= 8 + headerLength else {
            throw .truncated("header needs \(headerLength) bytes, file has \(bytes.count - 8)")
        }
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + headerLength)]), options: [])
        } catch {
            throw .invalidHeader("header is not JSON")
        }
        guard let object = json as? [String: Any] else { throw .invalidHeader("header is not a JSON object") }
        let dataOffset = 8 + headerLength
        let dataLength = bytes.count - dataOffset
        var entries: [String: SafetensorsEntry] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in object {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw .invalidHeader("__metadata__ is not an object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw .invalidHeader("metadata \(k) is not a string") }
                    metadata[k] = s
                }
                continue
            }
            guard let info = value as? [String: Any],
                  let dtypeName = info["dtype"] as? String,
                  let shapeAny = info["shape"] as? [Any],
                  let offsetsAny = info["data_offsets"] as? [Any], offsetsAny.count == 2 else {
                throw .invalidHeader("entry \(name) lacks dtype, shape or data_offsets")
            }
            guard let dtype = TensorDType(rawValue: dtypeName) else {
                throw .unsupportedDType(tensor: name, dtype: dtypeName)
            }
            var shape: [Int] = []
            var count = 1
            for s in shapeAny {
                guard let d = (s as? NSNumber)?.intValue, d >= 0, d <= Int(Int32.max) else {
                    throw .invalidHeader("entry \(name) has an invalid shape")
                }
                let (m, o) = count.multipliedReportingOverflow(by: d)
                guard !o, m <= Int(Int32.max) * 64 else { throw .badExtent(tensor: name, "shape is too large") }
                count = m
                shape.append(d)
            }
            guard let b = (offsetsAny[0] as? NSNumber)?.intValue, let e = (offsetsAny[1] as? NSNumber)?.intValue,
                  b >= 0, e >= b else {
                throw .invalidHeader("entry \(name) has invalid data_offsets")
            }
            guard e <= dataLength else {
                throw .truncated("tensor \(name) ends at \(e), data section has \(dataLength) bytes")
            }
            guard e - b == count * dtype.size else {
                throw .badExtent(tensor: name, "\(e - b) bytes for shape \(shape) of \(dtypeName)")
            }
            entries[name] = SafetensorsEntry(dtype: dtype, shape: shape, range: b..<e)
        }
        let sorted = entries.values.map(\.range).filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.upperBound > b.lowerBound {
            throw .invalidHeader("tensors overlap in the data section")
        }
        self.entries = entries
        self.metadata = metadata
        self.bytes = bytes
        self.dataOffset = dataOffset
    }

    /// Reads and parses a file.
    public init(contentsOf path: String) throws(SafetensorsError) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .io("cannot read \(path)")
        }
        try self.init(bytes: [UInt8](data))
    }

    /// The raw bytes of a tensor.
    public func rawBytes(of name: String) throws(SafetensorsError) -> ArraySlice<UInt8> {
        guard let e = entries[name] else { throw .missingTensor(name) }
        return bytes[(dataOffset + e.range.lowerBound)..<(dataOffset + e.range.upperBound)]
    }

    /// Converts a floating-point tensor to single precision into `destination` (which must
    /// hold ``SafetensorsEntry/elementCount`` floats).
    public func readFloats(_ name: String, into destination: UnsafeMutablePointer<Float>) throws(SafetensorsError) {
        guard let e = entries[name] else { throw .missingTensor(name) }
        let n = e.elementCount
        let start = dataOffset + e.range.lowerBound
        bytes.withUnsafeBytes { raw in
            let base = raw.baseAddress! + start
            switch e.dtype {
            case .f32:
                for i in 0..<n { destination[i] = Float(bitPattern: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self).littleEndian) }
            case .f16:
                for i in 0..<n { destination[i] = HalfPrecision.float(f16Bits: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) }
            case .bf16:
                for i in 0..<n { destination[i] = HalfPrecision.float(bf16Bits: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) }
            case .i64:
                for i in 0..<n { destination[i] = Float(Int64(littleEndian: base.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))) }
            }
        }
    }

    /// An I64 tensor's values.
    public func readInt64(_ name: String) throws(SafetensorsError) -> [Int64] {
        guard let e = entries[name] else { throw .missingTensor(name) }
        guard e.dtype == .i64 else { throw .unsupportedDType(tensor: name, dtype: e.dtype.rawValue) }
        let start = dataOffset + e.range.lowerBound
        return bytes.withUnsafeBytes { raw in
            (0..<e.elementCount).map { Int64(littleEndian: raw.loadUnaligned(fromByteOffset: start + 8 * $0, as: Int64.self)) }
        }
    }
}

/// Builds a safetensors file from tensors given as raw little-endian bytes.
public struct SafetensorsWriter {
    private var tensors: [(name: String, dtype: TensorDType, shape: [Int], bytes: [UInt8])] = []
    /// Metadata strings written under `__metadata__`.
    public var metadata: [String: String] = [:]

    public init() {}

    /// Adds a tensor.
    public mutating func add(_ name: String, dtype: TensorDType, shape: [Int], bytes: [UInt8]) {
        precondition(bytes.count == shape.reduce(1, *) * dtype.size)
        tensors.append((name, dtype, shape, bytes))
    }

    /// The encoded file. Tensors are laid out in the order added; the header is padded with
    /// spaces to a multiple of 8 bytes as the reference implementation does.
    public func encoded() -> [UInt8] {
        var header = "{"
        var items: [String] = []
        if !metadata.isEmpty {
            let m = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
            items.append("\"__metadata__\":{\(m.joined(separator: ","))}")
        }
        var offset = 0
        for t in tensors {
            let shape = t.shape.map(String.init).joined(separator: ",")
            items.append("\(jsonString(t.name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + t.bytes.count)]}")
            offset += t.bytes.count
        }
        header += items.joined(separator: ",") + "}"
        var h = Array(header.utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        var out: [UInt8] = []
        out.reserveCapacity(8 + h.count + offset)
        var n = UInt64(h.count)
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        out.append(contentsOf: h)
        for t in tensors { out.append(contentsOf: t.bytes) }
        return out
    }

    private func jsonString(_ s: String) -> String {
        var r = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": r += "\\\""
            case "\\": r += "\\\\"
            case "\n": r += "\\n"
            case "\r": r += "\\r"
            case "\t": r += "\\t"
            default:
                if u.value < 0x20 { r += String(format: "\\u%04x", u.value) } else { r.unicodeScalars.append(u) }
            }
        }
        return r + "\""
    }
}
