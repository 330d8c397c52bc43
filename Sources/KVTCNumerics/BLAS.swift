import CBLAS

/// Thin, typed wrappers over the CBLAS routines the project uses (row-major throughout).
public enum BLAS {
    /// Whether an operand is used as stored or transposed.
    public enum Operand: Sendable {
        case normal
        case transposed

        var cblas: CBLAS_TRANSPOSE { self == .normal ? CblasNoTrans : CblasTrans }
    }

    /// `C = alpha * op(A) * op(B) + beta * C` for row-major single-precision matrices.
    ///
    /// `op(A)` is `m x k`, `op(B)` is `k x n`, `C` is `m x n`.
    public static func gemm(_ transA: Operand = .normal, _ transB: Operand = .normal,
                            m: Int, n: Int, k: Int, alpha: Float = 1,
                            a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int,
                            beta: Float = 0,
                            c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        if k == 0 {
            if beta == 0 { for r in 0..<m { (c + r * ldc).update(repeating: 0, count: n) } }
            return
        }
        cblas_sgemm(CblasRowMajor, transA.cblas, transB.cblas,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb),
                    beta, c, Int32(ldc))
    }

    /// `y = alpha * op(A) * x + beta * y` for a row-major `m x n` matrix `A`.
    public static func gemv(_ trans: Operand = .normal, m: Int, n: Int, alpha: Float = 1,
                            a: UnsafePointer<Float>, lda: Int,
                            x: UnsafePointer<Float>, beta: Float = 0,
                            y: UnsafeMutablePointer<Float>) {
        guard m > 0, n > 0 else { return }
        cblas_sgemv(CblasRowMajor, trans.cblas, Int32(m), Int32(n), alpha, a, Int32(lda),
                    x, 1, beta, y, 1)
    }

    /// Upper triangle of `C = alpha * A^T * A + beta * C` where `A` is `k x n` row-major and
    /// `C` is `n x n` (the Gram/covariance update).
    public static func syrkTransposed(n: Int, k: Int, alpha: Float = 1,
                                      a: UnsafePointer<Float>, lda: Int,
                                      beta: Float = 0,
                                      c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard n > 0, k > 0 else { return }
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(n), Int32(k), alpha,
                    a, Int32(lda), beta, c, Int32(ldc))
    }

    /// Number of threads OpenBLAS uses.
    public static var threadCount: Int { Int(openblas_get_num_threads()) }

    /// Sets the number of threads OpenBLAS uses.
    public static func setThreadCount(_ n: Int) { openblas_set_num_threads(Int32(max(1, n))) }

    /// The CPU kernel family OpenBLAS chose at load (`SkylakeX`, `Haswell`, `Prescott`, ...).
    public static var coreName: String { String(cString: openblas_get_corename()) }

    /// The kernel family this CPU can run when OpenBLAS fell back to a generic one, else `nil`.
    ///
    /// OpenBLAS 0.3.21 (Debian 12) does not recognise some AVX-512 CPUs (Sapphire Rapids seen
    /// here) and runs its SSE3 `Prescott` kernels on them: sgemm 26 instead of ~190 GFLOP/s on
    /// two cores. Its AVX-512 kernels (`SkylakeX`, and `Cooperlake` with BF16) run correctly
    /// there. A recognised CPU, or one without AVX-512, gives `nil`.
    public static func betterCoreType(chosen: String = coreName, cpuFlags: Set<String>) -> String? {
        let generic: Set<String> = ["Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Barcelona"]
        guard generic.contains(chosen) else { return nil }
        guard ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"].allSatisfy(cpuFlags.contains) else {
            return cpuFlags.contains("avx2") && cpuFlags.contains("fma") ? "Haswell" : nil
        }
        return cpuFlags.contains("avx512_bf16") ? "Cooperlake" : "SkylakeX"
    }
}
