/// Conversions between single precision and the 16-bit formats caches are stored in.
public enum HalfPrecision {
    /// IEEE binary16 bits of `value` (round to nearest even).
    @inlinable
    public static func f16Bits(_ value: Float) -> UInt16 { Float16(value).bitPattern }

    /// The single-precision value of IEEE binary16 bits.
    @inlinable
    public static func float(f16Bits bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }

    /// bfloat16 bits of `value` (round to nearest even; NaN stays NaN).
    @inlinable
    public static func bf16Bits(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return UInt16(bits >> 16) | 0x40 }
        let rounding = UInt32(0x7FFF) + ((bits >> 16) & 1)
        return UInt16((bits &+ rounding) >> 16)
    }

    /// The single-precision value of bfloat16 bits.
    @inlinable
    public static func float(bf16Bits bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    /// Converts `count` binary16 values to single precision.
    @inlinable
    public static func convertF16ToFloat(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        src.withMemoryRebound(to: Float16.self, capacity: count) { h in
            for i in 0..<count { dst[i] = Float(h[i]) }
        }
    }

    /// Converts `count` little-endian binary16 values at `src` (any alignment) to single
    /// precision, eight at a time with integer operations: exact for every finite value,
    /// infinities and NaNs (payload kept). Much faster than converting one by one where the
    /// target has no F16C instructions (each conversion is then a library call).
    public static func convertF16ToFloat(littleEndian src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        typealias U = SIMD8<UInt32>
        let out = UnsafeMutableRawPointer(dst)
        var i = 0
        while i + 8 <= count {
            #if _endian(little)
            let h = U(truncatingIfNeeded: src.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<UInt16>.self))
            #else
            var h = U()
            for j in 0..<8 { h[j] = UInt32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * (i + j), as: UInt16.self))) }
            #endif
            out.storeBytes(of: halfBitsToFloat(h), toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        while i < count {
            dst[i] = Float(Float16(bitPattern: UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
            i += 1
        }
    }

    /// Eight binary16 bit patterns (in the low 16 bits) as single-precision values.
    @inline(__always)
    static func halfBitsToFloat(_ h: SIMD8<UInt32>) -> SIMD8<Float> {
        typealias U = SIMD8<UInt32>
        let magnitude = h & U(repeating: 0x7FFF)
        // Exponent and mantissa moved into place: as a float this is the value times 2^-112
        // (for normal and subnormal halves alike), so one multiplication rescales it exactly.
        let shifted = magnitude &<< U(repeating: 13)
        var bits = unsafeBitCast(unsafeBitCast(shifted, to: SIMD8<Float>.self) * SIMD8<Float>(repeating: 0x1p112), to: U.self)
        // Infinities and NaNs: all-ones exponent, mantissa kept.
        bits.replace(with: shifted | U(repeating: 0x7F80_0000), where: magnitude .>= U(repeating: 0x7C00))
        bits |= (h & U(repeating: 0x8000)) &<< U(repeating: 16)
        return unsafeBitCast(bits, to: SIMD8<Float>.self)
    }

    /// Converts `count` single-precision values to binary16.
    @inlinable
    public static func convertFloatToF16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, count: Int) {
        dst.withMemoryRebound(to: Float16.self, capacity: count) { h in
            for i in 0..<count { h[i] = Float16(src[i]) }
        }
    }

    /// Rounds every value to the nearest binary16 value (what storing as fp16 would keep).
    @inlinable
    public static func roundToF16(_ values: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { values[i] = Float(Float16(values[i])) }
    }
}
