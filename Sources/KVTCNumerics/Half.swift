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
