import CBLAS

/// Errors from LAPACK-backed factorizations.
public enum FactorizationError: Error, Equatable, CustomStringConvertible {
    /// LAPACK reported a failure with this `info` code.
    case lapackFailure(routine: String, info: Int)
    /// The input contains NaN or infinity.
    case nonFinite

    public var description: String {
        switch self {
        case .lapackFailure(let r, let info): return "LAPACK \(r) failed (info = \(info))"
        case .nonFinite: return "matrix contains NaN or infinite values"
        }
    }
}

/// Eigendecomposition of a symmetric matrix, largest eigenvalues first.
public struct SymmetricEigen: Sendable {
    /// Eigenvalues in descending order.
    public let values: [Double]
    /// Eigenvectors as the rows of a `count x n` row-major matrix, in the order of ``values``.
    public let vectors: [Double]
    /// Dimension of the decomposed matrix.
    public let dimension: Int

    /// Decomposes the symmetric `n x n` row-major matrix whose upper triangle is given,
    /// keeping the `count` largest eigenpairs (all when `count` is nil).
    ///
    /// Uses LAPACK `dsyevr`, which computes only the requested part of the spectrum.
    public init(symmetricUpper matrix: [Double], dimension n: Int, count: Int? = nil) throws(FactorizationError) {
        precondition(matrix.count == n * n)
        guard matrix.allSatisfy({ $0.isFinite }) else { throw .nonFinite }
        let k = min(count ?? n, n)
        var a = matrix
        var w = [Double](repeating: 0, count: n)
        var z = [Double](repeating: 0, count: n * max(k, 1))
        var isuppz = [Int32](repeating: 0, count: 2 * max(k, 1))
        var found: Int32 = 0
        // Row-major upper == column-major lower for a symmetric matrix.
        let info = LAPACKE_dsyevr(LAPACK_ROW_MAJOR, Int8(UInt8(ascii: "V")),
                                  Int8(UInt8(ascii: k == n ? "A" : "I")),
                                  Int8(UInt8(ascii: "U")), Int32(n), &a, Int32(n), 0, 0,
                                  Int32(n - k + 1), Int32(n), 0, &found, &w, &z, Int32(max(k, 1)),
                                  &isuppz)
        guard info == 0 else { throw .lapackFailure(routine: "dsyevr", info: Int(info)) }
        let m = Int(found)
        // z is n x m row-major with eigenvectors as columns, ascending eigenvalues.
        var vals = [Double](repeating: 0, count: m)
        var vecs = [Double](repeating: 0, count: m * n)
        for j in 0..<m {
            let src = m - 1 - j
            vals[j] = w[src]
            for i in 0..<n { vecs[j * n + i] = z[i * max(k, 1) + src] }
        }
        self.values = vals
        self.vectors = vecs
        self.dimension = n
    }
}
