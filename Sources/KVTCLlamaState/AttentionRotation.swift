import KVTCGGUF

/// The rotation llama.cpp applies to a quantized K/V cache: before K and V are written in a
/// quantized type (Q8_0 here), each block of `n` consecutive values of a row is multiplied by
/// the orthonormal Walsh-Hadamard matrix of size `n` (Sylvester order, scaled by 1/sqrt(n)),
/// which spreads outliers across the block; queries are rotated alike, so attention is
/// unchanged. The matrix is its own inverse. `n` is, for K, the largest power of two from 64
/// up that divides the head dimension and, for V, 64; heads whose dimension is not a multiple
/// of 64 are not rotated (nor are caches saved with `LLAMA_ATTN_ROT_DISABLE=1`, which the
/// state file does not record).
public struct AttentionRotation: Sendable, Equatable {
    /// Block size of the K rotation (nil: none).
    public var keyBlock: Int?
    /// Block size of the V rotation (nil: none).
    public var valueBlock: Int?

    public init(keyBlock: Int?, valueBlock: Int?) {
        self.keyBlock = keyBlock
        self.valueBlock = valueBlock
    }

    public static let none = AttentionRotation(keyBlock: nil, valueBlock: nil)

    /// What llama.cpp does for a model of `headDim` with K/V of these types.
    public static func llamaCpp(headDim: Int, keyType: GGMLType, valueType: GGMLType) -> AttentionRotation {
        guard headDim % 64 == 0 else { return .none }
        var k = 64
        while headDim % (k * 2) == 0 { k *= 2 }
        return AttentionRotation(keyBlock: keyType.blockSize > 1 ? k : nil, valueBlock: valueType.blockSize > 1 ? 64 : nil)
    }

    /// Rotates every block of `n` values of `x` in place (its own inverse).
    public static func apply(_ x: inout [Float], block n: Int) {
        precondition(n > 0 && n & (n - 1) == 0 && x.count % n == 0)
        let scale = 1 / Float(n).squareRoot()
        x.withUnsafeMutableBufferPointer { p in
            var base = 0
            while base < p.count {
                var h = 1
                while h < n {
                    var i = base
                    while i < base + n {
                        for j in i..<(i + h) {
                            let a = p[j], b = p[j + h]
                            p[j] = a + b
                            p[j + h] = a - b
                        }
                        i += 2 * h
                    }
                    h *= 2
                }
                for j in base..<(base + n) { p[j] *= scale }
                base += n
            }
        }
    }
}
