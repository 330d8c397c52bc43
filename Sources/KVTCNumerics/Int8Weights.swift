import CDNNL

/// A `k x n` matrix `B` held as 8-bit integers with one scale per column, packed once in the
/// blocked layout oneDNN's int8 matmul reads: `B[i, j] ~ columnScales[j] * Bq[i, j]`.
///
/// Products take rows already quantized (``quantizeRows(_:rows:columns:columnFactors:into:rowScales:)``)
/// and return their exact integer dot products in f32; the caller applies the row and column
/// scales (usually in a pass it makes over the result anyway). On a CPU with VNNI this runs at
/// about twice oneDNN's bfloat16 rate (2.1 against 1.04 TOP/s here for 4096 x 1856 x 5760).
public final class Int8Weights: @unchecked Sendable {
    /// Rows of `B`: the features an input row has.
    public let inFeatures: Int
    /// Columns of `B`: the features a product has.
    public let outFeatures: Int
    /// `B[:, j]`'s scale: its largest magnitude over 127.
    public let columnScales: [Float]
    private let packed: OneDNN.PackedMatrix
    private var layout: dnnl_memory_desc_t { packed.layout }
    private var storage: UnsafeMutableRawPointer { packed.storage }
    /// Bytes the packed matrix occupies.
    public var byteCount: Int { packed.byteCount }

    /// Quantizes a row-major f32 `inFeatures x outFeatures` matrix per column (round to
    /// nearest) and packs it. Throws on a value that is NaN or infinite, and where oneDNN has no VNNI (``OneDNN/hasInt8Unit``):
    /// without it oneDNN multiplies pairs of 8-bit values into saturating 16-bit sums, and
    /// the products are no longer exact (seen with `ONEDNN_MAX_CPU_ISA=AVX2`).
    public init(_ values: [Float], inFeatures: Int, outFeatures: Int) throws(OneDNNError) {
        precondition(values.count == inFeatures * outFeatures && inFeatures > 0 && outFeatures > 0)
        guard OneDNN.hasInt8Unit else { throw OneDNNError(call: "int8 matmul (needs VNNI; oneDNN runs \(OneDNN.isa))", status: -1) }
        guard values.allSatisfy(\.isFinite) else { throw OneDNNError(call: "int8 weights (a value is NaN or infinite)", status: -1) }
        var largest = [Float](repeating: 0, count: outFeatures)
        for i in 0..<inFeatures {
            for j in 0..<outFeatures { largest[j] = max(largest[j], abs(values[i * outFeatures + j])) }
        }
        let scales = largest.map { $0 > 0 ? $0 / 127 : 1 }
        var codes = [Int8](repeating: 0, count: values.count)
        for i in 0..<inFeatures {
            for j in 0..<outFeatures {
                codes[i * outFeatures + j] = Int8(max(-127, min(127, (values[i * outFeatures + j] / scales[j]).rounded())))
            }
        }
        let source = try OneDNN.descriptor(rows: inFeatures, columns: outFeatures, rowStride: outFeatures,
                                           columnStride: 1, type: dnnl_s8)
        packed = try OneDNN.pack(codes, from: source, n: outFeatures, k: inFeatures, operands: .int8)
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        columnScales = scales
    }

    deinit { storage.deallocate() }

    /// `y = xq Bq`: `xq` is `rows x inFeatures` int8 (dense), `y` `rows x outFeatures` f32
    /// (row stride `ldy`), each entry the exact integer sum (below 2^24 in magnitude for up to
    /// 1,040 features; beyond, rounded to f32's 24 bits).
    public func apply(_ xq: UnsafePointer<Int8>, rows: Int, into y: UnsafeMutablePointer<Float>, ldy: Int) throws(OneDNNError) {
        guard rows > 0 else { return }
        try OneDNN.matmul(m: rows, n: outFeatures, k: inFeatures, a: xq, b: storage, layout: .packed(layout),
                          c: y, ldc: ldy, operands: .int8)
    }

    /// Quantizes each row of `x` (`rows x columns` f32, dense), first multiplied by
    /// `columnFactors` when given, symmetrically to int8: `x[r, i] * f[i] ~ rowScales[r] * q[r, i]`
    /// with `rowScales[r]` the row's largest magnitude over 127 (1 for a zero row, NaN for a
    /// row holding NaN or infinity, so that what is made from it is NaN too).
    public static func quantizeRows(_ x: UnsafePointer<Float>, rows: Int, columns: Int, columnFactors: [Float]?,
                                    into q: UnsafeMutablePointer<Int8>, rowScales: UnsafeMutablePointer<Float>) {
        precondition(columnFactors == nil || columnFactors!.count == columns)
        let xs = UncheckedSendable(x), qs = UncheckedSendable(q), ss = UncheckedSendable(rowScales)
        let factors = columnFactors ?? [Float](repeating: 1, count: columns)
        factors.withUnsafeBufferPointer { fb in
            let f = UncheckedSendable(fb.baseAddress!)
            Parallel.forEachRange(rows, minimumPerTask: 64) { range in
                let scaled = UnsafeMutablePointer<Float>.allocate(capacity: columns)
                defer { scaled.deallocate() }
                for r in range {
                    let row = xs.value + r * columns
                    var largest: Float = 0
                    var finite = true
                    for i in 0..<columns {
                        let v = row[i] * f.value[i]
                        scaled[i] = v
                        largest = max(largest, abs(v))
                        finite = finite && v.isFinite
                    }
                    let out = qs.value + r * columns
                    guard finite else {
                        // A row with NaN or infinity keeps it: its products come out NaN.
                        out.update(repeating: 0, count: columns)
                        ss.value[r] = .nan
                        continue
                    }
                    let scale: Float = largest > 0 ? largest / 127 : 1
                    ss.value[r] = scale
                    let inverse = 1 / scale
                    for i in 0..<columns { out[i] = Int8(max(-127, min(127, (scaled[i] * inverse).rounded()))) }
                }
            }
        }
    }
}
