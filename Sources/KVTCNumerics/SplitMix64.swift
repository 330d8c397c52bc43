/// SplitMix64 (Steele, Lea and Flood 2014): a small, fast, seedable generator of 64-bit
/// values, for repeatable synthetic data and tests. Not cryptographic.
///
/// Each call adds the golden-ratio increment `0x9E3779B97F4A7C15` to the state and returns
/// the state scrambled by two multiply-xorshift rounds, so `SplitMix64(seed: s)` gives the
/// same sequence on every platform.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    /// The state: the seed plus the increment times the values drawn so far.
    public var state: UInt64

    /// A generator whose first value is the scrambled `seed + 0x9E3779B97F4A7C15`.
    @inlinable
    public init(seed: UInt64) { state = seed }

    /// The next 64 pseudo-random bits.
    @inlinable
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
