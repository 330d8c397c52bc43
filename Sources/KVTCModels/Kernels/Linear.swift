import KVTCNumerics

/// The OpenBLAS thread count restored after single-threaded attention kernels.
enum BLASThreads {
    static let configured: Int = max(1, BLAS.threadCount)
}

/// `y = x * W^T (+ y)` with `W` row-major `[out x in]`: GEMV for one row, GEMM otherwise.
enum Linear {
    @inline(__always)
    static func apply(x: UnsafePointer<Float>, rows: Int, weight: UnsafePointer<Float>,
                      outFeatures: Int, inFeatures: Int, y: UnsafeMutablePointer<Float>,
                      accumulate: Bool) {
        if rows == 1 {
            BLAS.gemv(.normal, m: outFeatures, n: inFeatures, a: weight, lda: inFeatures, x: x,
                      beta: accumulate ? 1 : 0, y: y)
        } else {
            BLAS.gemm(.normal, .transposed, m: rows, n: outFeatures, k: inFeatures,
                      a: x, lda: inFeatures, b: weight, ldb: inFeatures,
                      beta: accumulate ? 1 : 0, c: y, ldc: outFeatures)
        }
    }
}
