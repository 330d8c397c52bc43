import KVTCNumerics

/// The shape of one layer's grouped-query attention over a ``KVCache``.
public struct AttentionShape: Sendable, Equatable {
    /// Query heads.
    public var heads: Int
    /// Key/value heads; each serves `heads / kvHeads` query heads.
    public var kvHeads: Int
    /// Dimension of one head.
    public var headDim: Int
    /// Floats between consecutive tokens' rows in the cache (all layers and kv heads).
    public var cacheRowLength: Int
    /// Factor applied to `q . k` before the softmax.
    public var scale: Float
    /// Positions a query sees back from its own (itself included): a query at position `q`
    /// sees keys at positions `q - window + 1 ... q`, as llama.cpp masks sliding-window
    /// layers; `nil` for all of them.
    public var window: Int?

    public init(heads: Int, kvHeads: Int, headDim: Int, cacheRowLength: Int, scale: Float, window: Int?) {
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.cacheRowLength = cacheRowLength
        self.scale = scale
        self.window = window
    }
}

/// Causal attention kernels shared by the model families.
public enum Attention {
    /// Causal grouped-query attention of `rows` new queries against cache tokens
    /// `0 ..< first + rows` of one layer.
    ///
    /// Work is split into (kv head, query block) tasks run in parallel with single-threaded
    /// BLAS. Each task gathers the queries of every query head sharing its kv head into one
    /// `group * block x headDim` matrix, so each key and value row is read once per group:
    /// `S = Q K^T` by GEMM straight from the cache's strided rows, a masked softmax, and
    /// `O = P V` by GEMM. A single query token (a decode step) uses a GEMV per query head
    /// instead, which reads the cache's rows in place.
    ///
    /// - Parameters:
    ///   - queries: row `r` holds the query heads of token `first + r` (rotated), `queryStride`
    ///     floats apart.
    ///   - keys, values: this layer's first kv head in the cache's token 0 row.
    ///   - positions: the position of every cache token (`first + rows` of them, ascending),
    ///     which a window is measured in; `nil` means token `i` is at position `i`. A cache
    ///     with tokens evicted has gaps, and a window then spans fewer tokens.
    ///   - out: `rows x (heads * headDim)` attention outputs.
    ///   - precision: at ``ModelPrecision/bf16`` a pass of several queries without an
    ///     observer multiplies `Q K^T` and `P V` in bfloat16 on oneDNN (``HalfKeysValues``);
    ///     otherwise, and wherever oneDNN fails, OpenBLAS multiplies in f32.
    public static func causal(_ shape: AttentionShape, queries: UnsafeMutablePointer<Float>, queryStride: Int,
                              rows n: Int, first: Int, keys: UnsafeMutablePointer<Float>,
                              values: UnsafeMutablePointer<Float>, positions: [Int]? = nil,
                              out: UnsafeMutablePointer<Float>, observer: AttentionObserver? = nil,
                              precision: ModelPrecision = .f32) {
        let hd = shape.headDim, kvHeads = shape.kvHeads, group = shape.heads / kvHeads
        let qd = shape.heads * hd, p = shape.cacheRowLength, scale = shape.scale
        let window = shape.window ?? Int.max
        precondition(positions == nil || positions!.count >= first + n, "a position for every cache token")
        /// The first cache token a query of token `t` sees.
        func firstVisible(_ t: Int) -> Int {
            guard window != Int.max else { return 0 }
            guard let positions else { return max(0, t + 1 - window) }
            let oldest = positions[t] - window + 1
            var lo = 0, hi = t
            while lo < hi { let mid = (lo + hi) / 2; if positions[mid] < oldest { lo = mid + 1 } else { hi = mid } }
            return lo
        }
        let block = n == 1 ? 1 : 64
        let blocks = (n + block - 1) / block
        // Several queries and no observer at bfloat16: keys and values converted once here.
        let halves = precision == .bf16 && n > 1 && observer == nil
            ? HalfKeysValues(keys: keys, values: values, from: firstVisible(first), to: first + n,
                             kvHeads: kvHeads, headDim: hd, cacheRowLength: p) : nil
        let queries = UncheckedSendable(queries), keys = UncheckedSendable(keys)
        let values = UncheckedSendable(values), out = UncheckedSendable(out)
        BLAS.setThreadCount(1)
        defer { BLAS.setThreadCount(BLASThreads.configured) }
        // Largest blocks (latest queries) first for better balance.
        Parallel.forEach(kvHeads * blocks) { task in
            let kv = task % kvHeads
            let b = blocks - 1 - task / kvHeads
            let i0 = b * block, i1 = min(n, i0 + block), m = i1 - i0
            let gm = group * m
            // Keys visible to some query of this block: from the first query's window start.
            let k0 = firstVisible(first + i0)
            let nk = first + i1 - k0
            // A bfloat16 product's key count is rounded up (the padding is zero and masked)
            // so that primitives are shared across blocks and calls.
            let columns = halves == nil ? nk : HalfKeysValues.padded(nk)
            let kPtr = keys.value + kv * hd + k0 * p
            let vPtr = values.value + kv * hd + k0 * p
            // Gathered queries and outputs: row j * m + r is query head kv * group + j, token i0 + r.
            let q = UnsafeMutablePointer<Float>.allocate(capacity: gm * hd)
            let o = UnsafeMutablePointer<Float>.allocate(capacity: gm * hd)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: gm * columns)
            defer { q.deallocate(); o.deallocate(); scores.deallocate() }
            for j in 0..<group {
                for r in 0..<m {
                    (q + (j * m + r) * hd).update(from: queries.value + (i0 + r) * queryStride + (kv * group + j) * hd, count: hd)
                }
            }
            /// `P V` of the normalized-later probabilities into `o`.
            let weighValues: () -> Void
            if let halves, let product = halves.product(kv: kv, firstKey: k0 - halves.firstToken, queries: q, rows: gm,
                                                       columns: columns, scores: scores) {
                weighValues = { if !product.weighValues(into: o) { BLAS.gemm(.normal, .normal, m: gm, n: hd, k: nk, a: scores, lda: columns, b: vPtr, ldb: p, c: o, ldc: hd) } }
            } else if m == 1 {
                // One query token (a decode step): a GEMV per query head reads the cache's
                // rows in place, where a GEMM of so few rows would first copy every key and value.
                for j in 0..<gm {
                    BLAS.gemv(.normal, m: nk, n: hd, a: kPtr, lda: p, x: q + j * hd, y: scores + j * columns)
                }
                weighValues = {
                    for j in 0..<gm {
                        BLAS.gemv(.transposed, m: nk, n: hd, a: vPtr, lda: p, x: scores + j * columns, y: o + j * hd)
                    }
                }
            } else {
                BLAS.gemm(.normal, .transposed, m: gm, n: nk, k: hd, a: q, lda: hd,
                          b: kPtr, ldb: p, c: scores, ldc: columns)
                weighValues = { BLAS.gemm(.normal, .normal, m: gm, n: hd, k: nk, a: scores, lda: columns, b: vPtr, ldb: p, c: o, ldc: hd) }
            }
            var inverse = [Float](repeating: 0, count: gm)
            for row in 0..<gm {
                // Query token `t` sees keys firstVisible(t) ... t.
                let t = first + i0 + row % m
                let lo = max(k0, firstVisible(t)) - k0, hi = t + 1 - k0
                let s = scores + row * columns
                let mx = FastMath.max(s + lo, count: hi - lo)
                let sum = FastMath.expShiftedSum(s + lo, count: hi - lo, scale: scale, shift: mx * scale)
                if lo > 0 { s.update(repeating: 0, count: lo) }
                if hi < columns { (s + hi).update(repeating: 0, count: columns - hi) }
                inverse[row] = 1 / sum
            }
            observer?.add(probabilities: scores, rows: gm, columns: nk, firstColumn: k0, rowScale: inverse)
            weighValues()
            for j in 0..<group {
                for r in 0..<m {
                    let src = o + (j * m + r) * hd
                    let dst = out.value + (i0 + r) * qd + (kv * group + j) * hd
                    let inv = inverse[j * m + r]
                    for i in 0..<hd { dst[i] = src[i] * inv }
                }
            }
        }
    }
}

/// One layer's keys and values in bfloat16 for attention's products on oneDNN: each kv
/// head's rows `from ..< to` converted once per call into dense `tokens x headDim` blocks,
/// zero past the last token up to a padded key count.
///
/// Each (kv head, query block) task multiplies on its own thread (``OneDNN/singleThreaded(_:)``),
/// so the tasks run side by side as OpenBLAS's single-threaded ones did; measured here, a
/// single-threaded bf16 product of 192 queries and 4096 keys takes 0.19 ms against 0.78 for
/// f32 `sgemm`. Scores, the softmax and the outputs stay f32; the probabilities are rounded
/// to bfloat16 for `P V`.
final class HalfKeysValues: @unchecked Sendable {
    /// The first cache token held.
    let firstToken: Int
    let headDim: Int
    private let rows: Int
    private let keys: [UnsafeMutableRawPointer]
    private let values: [UnsafeMutableRawPointer]

    /// Key counts are padded to a multiple of this.
    static let keyAlignment = 128

    static func padded(_ count: Int) -> Int { (count + keyAlignment - 1) / keyAlignment * keyAlignment }

    /// Converts rows `from ..< to` of each kv head; `nil` if oneDNN cannot.
    init?(keys: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>, from: Int, to: Int,
          kvHeads: Int, headDim: Int, cacheRowLength p: Int) {
        guard OneDNN.canMultiplyBF16, to > from else { return nil }
        firstToken = from
        self.headDim = headDim
        rows = to - from + Self.keyAlignment
        var ks: [UnsafeMutableRawPointer] = [], vs: [UnsafeMutableRawPointer] = []
        var ok = true
        for kv in 0..<kvHeads {
            for (source, list) in [(keys, 0), (values, 1)] {
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: 2 * rows * headDim, alignment: 64)
                // The conversion writes the first `to - from` rows; the padding is zero.
                (buffer + 2 * (to - from) * headDim).initializeMemory(as: UInt16.self, repeating: 0,
                                                                      count: (rows - to + from) * headDim)
                if list == 0 { ks.append(buffer) } else { vs.append(buffer) }
                do {
                    try OneDNN.convert(rows: to - from, columns: headDim, ld: p, toBF16: true,
                                       from: source + kv * headDim + from * p, to: buffer)
                } catch { ok = false }
            }
        }
        self.keys = ks
        self.values = vs
        if !ok { return nil }
    }

    deinit { for b in keys + values { b.deallocate() } }

    /// One task's products: `Q K^T` computed now, `P V` on request.
    struct Product {
        let owner: HalfKeysValues
        let kv: Int, firstKey: Int, rows: Int, columns: Int
        let scores: UnsafeMutablePointer<Float>

        /// `o = P V` with `P` the (masked, unnormalized) scores rounded to bfloat16; false if
        /// oneDNN failed.
        func weighValues(into o: UnsafeMutablePointer<Float>) -> Bool {
            let hd = owner.headDim
            let p16 = UnsafeMutableRawPointer.allocate(byteCount: 2 * rows * columns, alignment: 64)
            defer { p16.deallocate() }
            do {
                try OneDNN.singleThreaded {
                    try OneDNN.convert(rows: rows, columns: columns, ld: columns, toBF16: true, from: scores, to: p16,
                                       execution: .concurrent)
                    try OneDNN.multiplyBF16(m: rows, n: hd, k: columns, a: p16, b: owner.values[kv] + 2 * firstKey * hd,
                                            ldb: hd, transposedB: false, c: o, ldc: hd, execution: .concurrent)
                }
                return true
            } catch { return false }
        }
    }

    /// `scores (rows x columns) = Q K^T` for kv head `kv`'s keys from `firstKey` (relative
    /// to ``firstToken``), or `nil` if oneDNN failed (the caller then uses f32).
    func product(kv: Int, firstKey: Int, queries: UnsafeMutablePointer<Float>, rows: Int, columns: Int,
                 scores: UnsafeMutablePointer<Float>) -> Product? {
        precondition(firstKey >= 0 && firstKey + columns <= self.rows)
        let q16 = UnsafeMutableRawPointer.allocate(byteCount: 2 * rows * headDim, alignment: 64)
        defer { q16.deallocate() }
        do {
            try OneDNN.singleThreaded {
                try OneDNN.convert(rows: rows, columns: headDim, ld: headDim, toBF16: true, from: queries, to: q16,
                                   execution: .concurrent)
                try OneDNN.multiplyBF16(m: rows, n: columns, k: headDim, a: q16, b: keys[kv] + 2 * firstKey * headDim,
                                        ldb: headDim, transposedB: true, c: scores, ldc: columns, execution: .concurrent)
            }
            return Product(owner: self, kv: kv, firstKey: firstKey, rows: rows, columns: columns, scores: scores)
        } catch { return nil }
    }
}
