import KVTCNumerics

/// The arithmetic of the codec's whole-cache reconstruction (decompress, restore) on the
/// oneDNN backend: the product of each token's dequantized coefficients with the basis.
///
/// The coefficients are already quantized to 2-8 bits per group, so 8-bit arithmetic adds
/// little to the codec's own error while VNNI multiplies 8-bit integers about twice as fast
/// as bfloat16. Layer-wise decoding and the OpenBLAS backend use their own products.
public enum ReconstructionArithmetic: String, Sendable, CaseIterable, CustomStringConvertible {
    /// bfloat16 coefficients and basis, f32 accumulation.
    case bf16
    /// Coefficients quantized per token and basis per feature to 8-bit integers (each
    /// component's spread shared between them), exact 32-bit sums, then both scales.
    case int8

    /// The arithmetic a compressor gets unless told otherwise: the one ``select(_:)`` chose,
    /// else ``int8`` where oneDNN has AVX-512 VNNI's integer dot products, else ``bf16``.
    public static var preferred: ReconstructionArithmetic {
        selection.current ?? (OneDNN.hasInt8Unit ? .int8 : .bf16)
    }

    private static let selection = Locked<ReconstructionArithmetic?>(nil)

    /// Makes `arithmetic` the ``preferred`` one for the rest of the process (`nil`: back to
    /// the machine's choice); the command line's `--reconstruction`.
    public static func select(_ arithmetic: ReconstructionArithmetic?) { selection.withLock { $0 = arithmetic } }

    /// Plans whose codes average this many bits per component or more reconstruct in
    /// bfloat16 even when ``int8`` is asked for: there a token's 8-bit coefficients are no
    /// longer much finer than its codes. Measured (`kvtc eval --reconstruction int8|bf16`, 12
    /// held-out windows, SmolLM2's default profile): at 4x (codes of 4.5 bits on average)
    /// int8 made the mean KL 0.00055 against bf16's 0.00038 and at 8x (4.0-4.05 bits)
    /// 0.00263 against 0.00231; at 16x (3.4-3.7 bits) 0.00656 against 0.00651, at 32x
    /// 0.0227 against 0.0219, at 64x 0.0561 against 0.0553 (f32: 0.00637 at 16x).
    public static let int8MaximumMeanBits = 4.0

    public var description: String { rawValue }
}
