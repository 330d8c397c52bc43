import KVTCNumerics

/// What a model's linear layers hold their weights in and multiply at.
public enum ModelPrecision: String, Sendable, CaseIterable, CustomStringConvertible {
    /// f32 weights multiplied by OpenBLAS: the reference path.
    case f32
    /// bfloat16 weights (half the bytes each decoded token reads) multiplied by oneDNN on
    /// the CPU's BF16 unit, activations rounded to bfloat16, f32 accumulation.
    case bf16

    public var description: String { rawValue }

    /// The precision a model loads at unless told otherwise: bfloat16 where the codec's
    /// backend (``GEMMBackend/preferred``) is oneDNN and oneDNN has a bfloat16 matmul here,
    /// else f32.
    public static var preferred: ModelPrecision {
        GEMMBackend.preferred == .onednn && OneDNN.canMultiplyBF16 ? .bf16 : .f32
    }

    /// Whether this machine can run a model at this precision.
    public var isAvailable: Bool { self == .f32 || OneDNN.canMultiplyBF16 }

    /// The library and units that run the model's products at this precision, for
    /// benchmark tables.
    public var engineDescription: String {
        switch self {
        case .f32: return "OpenBLAS f32 (\(BLAS.coreName) kernels, \(BLAS.threadCount) threads)"
        case .bf16: return "oneDNN bf16 matmul (\(OneDNN.isa))"
        }
    }
}
