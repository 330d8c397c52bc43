import CDNNL

/// A linear layer's weight `W` (`out x in`) held in bfloat16 in the blocked layout oneDNN's
/// matmul reads fastest, converted and packed once: `y = x W^T` for any number of rows `x`.
///
/// The layout depends only on the weight's shape, so one copy serves a one-row decode step
/// and a 2048-row prefill alike.
public final class BF16Weights: @unchecked Sendable {
    /// Rows of `W`: the features a product has.
    public let outFeatures: Int
    /// Columns of `W`: the features an input row has.
    public let inFeatures: Int
    private let packed: OneDNN.PackedMatrix
    private var layout: dnnl_memory_desc_t { packed.layout }
    private var storage: UnsafeMutableRawPointer { packed.storage }
    /// Bytes the packed weight occupies.
    public var byteCount: Int { packed.byteCount }

    /// Converts a row-major f32 `outFeatures x inFeatures` weight (round to nearest even).
    public convenience init(_ values: [Float], outFeatures: Int, inFeatures: Int) throws(OneDNNError) {
        try self.init(values, outFeatures: outFeatures, inFeatures: inFeatures, transposed: false)
    }

    /// Converts a weight stored transposed: `values` is `W^T`, row-major `inFeatures x
    /// outFeatures` (a basis whose rows are components, multiplied from the left by
    /// coefficients).
    public convenience init(transposed values: [Float], outFeatures: Int, inFeatures: Int) throws(OneDNNError) {
        try self.init(values, outFeatures: outFeatures, inFeatures: inFeatures, transposed: true)
    }

    private init(_ values: [Float], outFeatures: Int, inFeatures: Int, transposed: Bool) throws(OneDNNError) {
        precondition(values.count == outFeatures * inFeatures && outFeatures > 0 && inFeatures > 0)
        // `W` row-major is `W^T` (`in x out`) with strides (1, in): the matmul's `B`.
        let source = try OneDNN.descriptor(rows: inFeatures, columns: outFeatures, rowStride: transposed ? outFeatures : 1,
                                           columnStride: transposed ? 1 : inFeatures, type: dnnl_f32)
        packed = try OneDNN.pack(values, from: source, n: outFeatures, k: inFeatures, operands: .bf16)
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
    }

    deinit { storage.deallocate() }

    /// `y = x W^T` (`+ y` when `accumulate`): `x` is `rows x inFeatures` f32 (dense),
    /// converted to bfloat16 first; `y` is `rows x outFeatures` f32 (dense); f32
    /// accumulation.
    public func apply(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>,
                      accumulate: Bool) throws(OneDNNError) {
        guard rows > 0 else { return }
        let x16 = UnsafeMutableRawPointer.allocate(byteCount: 2 * rows * inFeatures, alignment: 64)
        defer { x16.deallocate() }
        try OneDNN.convert(rows: rows, columns: inFeatures, ld: inFeatures, toBF16: true, from: x, to: x16)
        try OneDNN.matmul(m: rows, n: outFeatures, k: inFeatures, a: x16, b: storage, layout: .packed(layout),
                          c: y, ldc: outFeatures, accumulate: accumulate)
    }

    /// The weight back in f32, row-major `outFeatures x inFeatures` (each value exactly the
    /// bfloat16 one held).
    public func floats() throws(OneDNNError) -> [Float] {
        var out = [Float](repeating: 0, count: outFeatures * inFeatures)
        let destination = try OneDNN.descriptor(rows: inFeatures, columns: outFeatures, rowStride: 1,
                                                columnStride: inFeatures, type: dnnl_f32)
        let result: Result<Void, OneDNNError> = out.withUnsafeMutableBytes { o in
            do throws(OneDNNError) {
                try OneDNN.reorder(storage, from: layout, into: o.baseAddress!, to: destination)
                return .success(())
            } catch { return .failure(error) }
        }
        if case .failure(let e) = result { throw e }
        return out
    }
}
