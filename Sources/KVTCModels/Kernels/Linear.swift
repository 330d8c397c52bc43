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

    /// `x * W^T` as a new matrix (`x.rows x outFeatures`): the output projection to logits.
    static func apply(_ x: Matrix, weight: [Float], outFeatures: Int) -> Matrix {
        var out = Matrix(rows: x.rows, columns: outFeatures)
        guard x.rows > 0 else { return out }
        x.elements.withUnsafeBufferPointer { h in
            weight.withUnsafeBufferPointer { w in
                out.elements.withUnsafeMutableBufferPointer { o in
                    apply(x: h.baseAddress!, rows: x.rows, weight: w.baseAddress!, outFeatures: outFeatures,
                          inFeatures: x.columns, y: o.baseAddress!, accumulate: false)
                }
            }
        }
        return out
    }

    /// Squared norm of each input column of `W` (`[out x in]`): how strongly each input
    /// feature reaches the output (the attention output projection's, for sensitivity).
    static func columnEnergy(weight: [Float], outFeatures: Int, inFeatures: Int) -> [Float] {
        var energy = [Float](repeating: 0, count: inFeatures)
        for r in 0..<outFeatures { for j in 0..<inFeatures { let x = weight[r * inFeatures + j]; energy[j] += x * x } }
        return energy
    }
}
