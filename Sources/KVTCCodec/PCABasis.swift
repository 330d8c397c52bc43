import KVTCNumerics

/// A learned linear transform of one stream's feature rows: a mean and an orthonormal
/// basis whose rows are principal components in order of decreasing variance.
public struct PCABasis: Sendable, Equatable {
    /// Features per row (`p`).
    public let dimension: Int
    /// The mean row subtracted before projection.
    public let mean: [Float]
    /// `rank x dimension` row-major; row `i` is component `i`.
    public let components: Matrix
    /// Variance of each component over the calibration rows.
    public let variances: [Double]
    /// Total variance of the calibration rows (all `dimension` directions).
    public let totalVariance: Double

    /// Number of stored components.
    public var rank: Int { components.rows }

    public init(mean: [Float], components: Matrix, variances: [Double], totalVariance: Double) {
        precondition(mean.count == components.columns && variances.count == components.rows)
        self.dimension = mean.count
        self.mean = mean
        self.components = components
        self.variances = variances
        self.totalVariance = totalVariance
    }

    /// Fits mean and basis to `count` rows of `dimension` features. The rows are centered
    /// in place. The covariance is accumulated with SYRK and decomposed with LAPACK.
    ///
    /// - Parameter rankCap: keep at most this many components.
    public static func fit(centeringInPlace rows: UnsafeMutablePointer<Float>, count: Int, dimension p: Int,
                           rankCap: Int? = nil, progress: ((String) -> Void)? = nil) throws(FactorizationError) -> PCABasis {
        precondition(count > 0)
        // Mean in double.
        var meanD = [Double](repeating: 0, count: p)
        for r in 0..<count {
            let x = rows + r * p
            for i in 0..<p { meanD[i] += Double(x[i]) }
        }
        let mean = meanD.map { Float($0 / Double(count)) }
        mean.withUnsafeBufferPointer { m in
            let mb = UncheckedSendable(m.baseAddress!), rb = UncheckedSendable(rows)
            Parallel.forEachRange(count, minimumPerTask: 256) { range in
                for r in range {
                    let x = rb.value + r * p
                    for i in 0..<p { x[i] -= mb.value[i] }
                }
            }
        }
        // Covariance (upper triangle) accumulated in double over float SYRK blocks.
        progress?("covariance of \(count) rows x \(p)")
        var cov = [Double](repeating: 0, count: p * p)
        var block = [Float](repeating: 0, count: p * p)
        let chunk = 4096
        var start = 0
        while start < count {
            let n = min(chunk, count - start)
            block.withUnsafeMutableBufferPointer { c in
                BLAS.syrkTransposed(n: p, k: n, a: rows + start * p, lda: p, c: c.baseAddress!, ldc: p)
            }
            for i in 0..<p { for j in i..<p { cov[i * p + j] += Double(block[i * p + j]) } }
            start += n
        }
        var total = 0.0
        for i in 0..<p {
            for j in i..<p { cov[i * p + j] /= Double(count) }
            total += cov[i * p + i]
        }
        progress?("eigendecomposition of \(p) x \(p)")
        let k = min(rankCap ?? p, p)
        let eig = try SymmetricEigen(symmetricUpper: cov, dimension: p, count: k)
        let comps = Matrix(rows: eig.values.count, columns: p, elements: eig.vectors.map { Float($0) })
        return PCABasis(mean: mean, components: comps, variances: eig.values.map { max(0, $0) }, totalVariance: total)
    }

    /// The leading `count` components.
    public func truncated(to count: Int) -> PCABasis {
        let k = min(count, rank)
        let comps = Matrix(rows: k, columns: dimension, elements: Array(components.elements[0..<(k * dimension)]))
        return PCABasis(mean: mean, components: comps, variances: Array(variances[0..<k]), totalVariance: totalVariance)
    }
}
