import KVTCNumerics

/// How rows kept without lossy compression are written: little-endian fp16 or f32 values,
/// back to back.
///
/// One definition for every place that stores exact rows: the codec's protected tokens
/// (``KVTCCompressor``), the store's exact entries and tails, and the baselines' exact
/// tokens and kept rows. ``lossless(_:)`` picks fp16 when it loses nothing, which is the
/// usual case since models hold their caches in 16 bits.
public enum ExactRowEncoding: Int, Sendable, Hashable, CaseIterable {
    /// IEEE binary16 (rounded to nearest even when the value is not representable).
    case fp16 = 16
    /// IEEE binary32: every value exactly.
    case fp32 = 32

    /// Bits per value (16 or 32), as formats record the encoding.
    public var bits: Int { rawValue }

    /// Bytes that `values` values occupy.
    public func byteCount(values: Int) -> Int { values * rawValue / 8 }

    /// fp16 when every value of every run is exactly representable in fp16, else fp32.
    public static func lossless(_ runs: [ArraySlice<Float>]) -> ExactRowEncoding {
        for run in runs {
            let exact = run.withUnsafeBufferPointer { b in b.allSatisfy { Float(Float16($0)) == $0 } }
            if !exact { return .fp32 }
        }
        return .fp16
    }

    /// Appends `values` to `writer`.
    public func append(_ values: ArraySlice<Float>, to writer: inout ByteWriter) {
        values.withUnsafeBufferPointer { b in
            switch self {
            case .fp16:
                var out = [UInt16](repeating: 0, count: b.count)
                for i in 0..<b.count { out[i] = HalfPrecision.f16Bits(b[i]).littleEndian }
                out.withUnsafeBytes { writer.raw($0) }
            case .fp32:
                var out = [UInt32](repeating: 0, count: b.count)
                for i in 0..<b.count { out[i] = b[i].bitPattern.littleEndian }
                out.withUnsafeBytes { writer.raw($0) }
            }
        }
    }

    /// `values` encoded.
    public func encode(_ values: ArraySlice<Float>) -> [UInt8] {
        var w = ByteWriter(capacity: byteCount(values: values.count))
        append(values, to: &w)
        return w.bytes
    }

    /// Decodes `count` values from `source` (any alignment) into `destination`.
    public func decode(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutablePointer<Float>) {
        switch self {
        case .fp16:
            HalfPrecision.convertF16ToFloat(littleEndian: source, destination, count: count)
        case .fp32:
            for i in 0..<count {
                destination[i] = Float(bitPattern: UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
            }
        }
    }

    /// The values encoded in `bytes`, whose length must be a multiple of the value size.
    public func decode(_ bytes: ArraySlice<UInt8>) -> [Float] {
        let count = bytes.count / (rawValue / 8)
        precondition(byteCount(values: count) == bytes.count, "\(bytes.count) bytes are not whole \(self) values")
        guard count > 0 else { return [] }
        return [Float](unsafeUninitializedCapacity: count) { out, initialized in
            bytes.withUnsafeBytes { decode($0.baseAddress!, count: count, into: out.baseAddress!) }
            initialized = count
        }
    }
}
