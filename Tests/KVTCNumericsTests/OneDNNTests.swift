import Testing
@testable import KVTCNumerics

/// oneDNN's bfloat16 products against OpenBLAS's f32 ones. Rounding an operand to
/// bfloat16 (8-bit significand, round to nearest) moves it by at most half an ulp, 2^-8 of
/// itself, so a product of two rounded operands, accumulated in f32, differs from the f32
/// product by at most about 2 * 2^-8 * sum |a_i| |b_i| (plus f32 rounding): the tolerance
/// below, 2^-7 of that sum. These run on any ISA (oneDNN emulates bfloat16
/// without the unit: `ONEDNN_MAX_CPU_ISA=AVX2`).
@Suite struct OneDNNTests {
    static func matrix(_ rows: Int, _ columns: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<(rows * columns)).map { _ in Float(Int64(rng.next() % 20_001) - 10_000) / 7_000 }
    }

    /// Checks `c` against the f32 product `a (m x k) * b (k x n, element (i, j) at b[i * bi + j * bj])`.
    static func withinBound(_ c: [Float], ldc: Int, _ a: [Float], lda: Int, m: Int, k: Int, n: Int,
                            b: (Int, Int) -> Float) -> Bool {
        for i in 0..<m {
            for j in 0..<n {
                var exact = 0.0, magnitude = 0.0
                for t in 0..<k {
                    let x = Double(a[i * lda + t]) * Double(b(t, j))
                    exact += x
                    magnitude += abs(x)
                }
                if abs(Double(c[i * ldc + j]) - exact) > magnitude / 128 + 1e-6 { return false }
            }
        }
        return true
    }

    @Test func productsMatchF32WithinBFloat16Rounding() throws {
        #expect(!OneDNN.isa.isEmpty)
        let m = 37, k = 70, rank = 24
        // The projection's shape: rows (stride 80) times the transposed basis (rank x k).
        let x = Self.matrix(m, 80, seed: 1), basis = Self.matrix(rank, k, seed: 2)
        let bf16 = try BF16Matrix(basis, rows: rank, columns: k)
        var y = [Float](repeating: 0, count: m * rank)
        guard OneDNN.canMultiplyBF16 else {
            // Below AVX-512 oneDNN has no bfloat16 matmul: a typed error, and the codec's
            // oneDNN backend is OpenBLAS's (`KVTCCompressorTests`).
            #expect(!OneDNN.hasBF16Unit)
            #expect(throws: OneDNNError.self) {
                try x.withUnsafeBufferPointer { xp in
                    try y.withUnsafeMutableBufferPointer { try bf16.multiply(xp.baseAddress!, rows: m, lda: 80, transposed: true, into: $0.baseAddress!, ldc: rank) }
                }
            }
            return
        }
        try x.withUnsafeBufferPointer { xp in
            try y.withUnsafeMutableBufferPointer { try bf16.multiply(xp.baseAddress!, rows: m, lda: 80, transposed: true, into: $0.baseAddress!, ldc: rank) }
        }
        #expect(Self.withinBound(y, ldc: rank, x, lda: 80, m: m, k: k, n: rank) { t, j in basis[j * k + t] })
        // The reconstruction's shape: coefficients (m x rank) times a column block of the
        // basis, written with a row stride wider than the block.
        let cols = 16..<52
        var out = [Float](repeating: .nan, count: m * 60)
        try y.withUnsafeBufferPointer { yp in
            try out.withUnsafeMutableBufferPointer {
                try bf16.multiply(yp.baseAddress!, rows: m, lda: rank, transposed: false, columns: cols, into: $0.baseAddress!, ldc: 60)
            }
        }
        #expect(Self.withinBound(out, ldc: 60, y, lda: rank, m: m, k: rank, n: cols.count) { t, j in basis[t * k + cols.lowerBound + j] })
        // Columns outside the block are not touched.
        #expect((0..<m).allSatisfy { r in out[(r * 60 + cols.count)..<(r * 60 + 60)].allSatisfy(\.isNaN) })
        // A second product of the same shape reuses the primitive and gives the same result.
        var again = [Float](repeating: 0, count: m * rank)
        try x.withUnsafeBufferPointer { xp in
            try again.withUnsafeMutableBufferPointer { try bf16.multiply(xp.baseAddress!, rows: m, lda: 80, transposed: true, into: $0.baseAddress!, ldc: rank) }
        }
        #expect(again == y)
    }

    /// A linear layer's packed bfloat16 weight against the f32 product, for one row (a
    /// decode step) and many (a prefill) with the same weight, overwriting and accumulating.
    @Test func packedWeightsMatchF32WithinBFloat16Rounding() throws {
        let out = 45, inFeatures = 70
        let w = Self.matrix(out, inFeatures, seed: 3)
        guard OneDNN.canMultiplyBF16 else {
            #expect(throws: OneDNNError.self) { _ = try BF16Weights(w, outFeatures: out, inFeatures: inFeatures) }
            return
        }
        let weights = try BF16Weights(w, outFeatures: out, inFeatures: inFeatures)
        #expect(weights.byteCount >= 2 * out * inFeatures)
        for rows in [1, 5, 300] {
            let x = Self.matrix(rows, inFeatures, seed: UInt64(10 + rows))
            var y = [Float](repeating: .nan, count: rows * out)
            try x.withUnsafeBufferPointer { xp in
                try y.withUnsafeMutableBufferPointer { try weights.apply(xp.baseAddress!, rows: rows, into: $0.baseAddress!, accumulate: false) }
            }
            #expect(Self.withinBound(y, ldc: out, x, lda: inFeatures, m: rows, k: inFeatures, n: out) { t, j in w[j * inFeatures + t] },
                    "\(rows) rows")
            // Accumulating adds the same product to what the output held.
            let before = Self.matrix(rows, out, seed: UInt64(20 + rows))
            var sum = before
            try x.withUnsafeBufferPointer { xp in
                try sum.withUnsafeMutableBufferPointer { try weights.apply(xp.baseAddress!, rows: rows, into: $0.baseAddress!, accumulate: true) }
            }
            let accumulated = (0..<y.count).allSatisfy { (i: Int) -> Bool in
                let added: Float = sum[i] - before[i]
                return abs(added - y[i]) <= 1e-5 * (1 + abs(before[i]))
            }
            #expect(accumulated, "\(rows) rows accumulated")
        }
        // The values held are the f32 ones rounded to bfloat16 (low 16 bits clear, within 2^-8).
        let held = try weights.floats()
        #expect(held.count == w.count)
        let rounded = (0..<w.count).allSatisfy { (i: Int) -> Bool in
            held[i].bitPattern & 0xFFFF == 0 && abs(held[i] - w[i]) <= abs(w[i]) / 256
        }
        #expect(rounded)
        // A weight given transposed (a basis, components as rows) packs to the same values.
        var transposed = [Float](repeating: 0, count: w.count)
        for o in 0..<out { for i in 0..<inFeatures { transposed[i * out + o] = w[o * inFeatures + i] } }
        #expect(try BF16Weights(transposed: transposed, outFeatures: out, inFeatures: inFeatures).floats() == held)
    }

    /// 8-bit integer products (on VNNI) are exact: a matrix whose columns' largest magnitude is 127
    /// quantizes to itself, rows likewise, and each product is the exact integer dot product
    /// (one row, a few, and many, with a row stride wider than the product).
    @Test func integerProductsAreExact() throws {
        let k = 70, n = 45
        var rng = SplitMix64(seed: 5)
        func integers(_ count: Int) -> [Float] { (0..<count).map { _ in Float(Int64(rng.next() % 255) - 127) } }
        var b = integers(k * n)
        for j in 0..<n { b[j] = 127 }  // every column's largest magnitude is 127: scale 1
        guard OneDNN.hasInt8Unit else {
            // Without VNNI oneDNN's 8-bit products saturate 16-bit partial sums: refused.
            #expect(throws: OneDNNError.self) { _ = try Int8Weights(b, inFeatures: k, outFeatures: n) }
            return
        }
        let weights = try Int8Weights(b, inFeatures: k, outFeatures: n)
        #expect(weights.columnScales.allSatisfy { $0 == 1 })
        #expect(weights.byteCount >= k * n)
        for rows in [1, 5, 300] {
            var x = integers(rows * k)
            for r in 0..<rows { x[r * k] = -127 }
            var q = [Int8](repeating: 0, count: rows * k)
            var scales = [Float](repeating: 0, count: rows)
            Int8Weights.quantizeRows(x, rows: rows, columns: k, columnFactors: nil, into: &q, rowScales: &scales)
            #expect(scales.allSatisfy { $0 == 1 } && q.map(Float.init) == x, "\(rows) rows quantize to themselves")
            let ldy = n + 3
            var y = [Float](repeating: .nan, count: rows * ldy)
            try q.withUnsafeBufferPointer { qp in
                try y.withUnsafeMutableBufferPointer { try weights.apply(qp.baseAddress!, rows: rows, into: $0.baseAddress!, ldy: ldy) }
            }
            let exact = (0..<rows).allSatisfy { r in
                (0..<n).allSatisfy { j in
                    let sum = (0..<k).reduce(0) { $0 + Int(x[r * k + $1]) * Int(b[$1 * n + j]) }
                    return y[r * ldy + j] == Float(sum)
                }
            }
            #expect(exact, "\(rows) rows")
            #expect((0..<rows).allSatisfy { r in y[(r * ldy + n)..<(r * ldy + ldy)].allSatisfy(\.isNaN) })
        }
    }

    /// Quantizing rows: each value within half a step of its row's scale (the largest
    /// magnitude over 127) after the column factors; a zero row has scale 1; a row holding
    /// NaN gets a NaN scale so that whatever is made from it is NaN, never a finite guess.
    @Test func rowsQuantizeWithinHalfAStep() {
        let rows = 4, columns = 33
        var x = Self.matrix(rows, columns, seed: 8)
        for i in 0..<columns { x[2 * columns + i] = 0 }
        x[3 * columns + 5] = .nan
        let factors = (0..<columns).map { Float(1 + $0 % 3) }
        var q = [Int8](repeating: 0, count: rows * columns)
        var scales = [Float](repeating: 0, count: rows)
        Int8Weights.quantizeRows(x, rows: rows, columns: columns, columnFactors: factors, into: &q, rowScales: &scales)
        for r in 0..<2 {
            let largest = (0..<columns).map { abs(x[r * columns + $0] * factors[$0]) }.max()!
            #expect(scales[r] == largest / 127)
            #expect((0..<columns).allSatisfy { abs(Float(q[r * columns + $0]) * scales[r] - x[r * columns + $0] * factors[$0]) <= scales[r] / 2 * 1.0001 })
            #expect(q[(r * columns)..<((r + 1) * columns)].contains { abs($0) == 127 })
        }
        #expect(scales[2] == 1 && q[(2 * columns)..<(3 * columns)].allSatisfy { $0 == 0 })
        #expect(scales[3].isNaN)
    }

    /// An embedding row looked up in bfloat16 is the row's bfloat16 values, widened exactly.
    @Test func bfloat16RowsWidenExactly() throws {
        let table = Self.matrix(9, 33, seed: 4)
        guard let bf16 = try? BF16Matrix(table, rows: 9, columns: 33) else {
            #expect(!OneDNN.canMultiplyBF16)
            return
        }
        var row = [Float](repeating: 0, count: 33)
        row.withUnsafeMutableBufferPointer { bf16.copyRow(7, scale: 2, into: $0.baseAddress!) }
        for j in 0..<33 {
            let widened: Float = row[j] / 2, original: Float = table[7 * 33 + j]
            #expect(abs(widened - original) <= abs(original) / 256 && widened.bitPattern & 0xFFFF == 0, "column \(j)")
        }
    }

    @Test func backendsAreNamedForTheCommandLine() {
        #expect(GEMMBackend(rawValue: "onednn") == .onednn && GEMMBackend(rawValue: "openblas") == .openblas)
        #expect(GEMMBackend(rawValue: "mkl") == nil)
    }
}
