/// A dense row-major matrix of single-precision floats.
///
/// `Matrix` is a value type: copies share storage until one is mutated. All heavy work on
/// matrices goes through BLAS and LAPACK (see ``BLAS`` and ``SymmetricEigen``).
public struct Matrix: Sendable, Equatable {
    /// Number of rows.
    public private(set) var rows: Int
    /// Number of columns; also the stride between consecutive rows.
    public private(set) var columns: Int
    /// Row-major elements, `rows * columns` of them.
    public var elements: [Float]

    /// A matrix of zeros.
    public init(rows: Int, columns: Int) {
        precondition(rows >= 0 && columns >= 0)
        self.rows = rows
        self.columns = columns
        self.elements = [Float](repeating: 0, count: rows * columns)
    }

    /// A matrix over existing row-major elements.
    public init(rows: Int, columns: Int, elements: [Float]) {
        precondition(elements.count == rows * columns, "matrix element count mismatch")
        self.rows = rows
        self.columns = columns
        self.elements = elements
    }

    /// The element at `row`, `column`.
    @inlinable
    public subscript(row: Int, column: Int) -> Float {
        get { elements[row * columns + column] }
        set { elements[row * columns + column] = newValue }
    }

    /// A copy of one row.
    public func row(_ index: Int) -> [Float] {
        Array(elements[(index * columns)..<((index + 1) * columns)])
    }

    /// The leading `count` columns of every row.
    public func leadingColumns(_ count: Int) -> Matrix {
        precondition(count <= columns)
        if count == columns { return self }
        var out = Matrix(rows: rows, columns: count)
        elements.withUnsafeBufferPointer { src in
            out.elements.withUnsafeMutableBufferPointer { dst in
                for r in 0..<rows {
                    for c in 0..<count { dst[r * count + c] = src[r * columns + c] }
                }
            }
        }
        return out
    }

    /// The transpose.
    public var transposed: Matrix {
        var out = Matrix(rows: columns, columns: rows)
        elements.withUnsafeBufferPointer { src in
            out.elements.withUnsafeMutableBufferPointer { dst in
                for r in 0..<rows {
                    for c in 0..<columns { dst[c * rows + r] = src[r * columns + c] }
                }
            }
        }
        return out
    }

    /// `self * other` through BLAS.
    public func multiplied(by other: Matrix) -> Matrix {
        precondition(columns == other.rows, "matrix shapes do not chain")
        var out = Matrix(rows: rows, columns: other.columns)
        elements.withUnsafeBufferPointer { a in
            other.elements.withUnsafeBufferPointer { b in
                out.elements.withUnsafeMutableBufferPointer { c in
                    BLAS.gemm(m: rows, n: other.columns, k: columns,
                              a: a.baseAddress!, lda: columns,
                              b: b.baseAddress!, ldb: other.columns,
                              c: c.baseAddress!, ldc: other.columns)
                }
            }
        }
        return out
    }
}
