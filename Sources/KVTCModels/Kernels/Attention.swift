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
    /// `O = P V` by GEMM.
    ///
    /// - Parameters:
    ///   - queries: row `r` holds the query heads of token `first + r` (rotated), `queryStride`
    ///     floats apart.
    ///   - keys, values: this layer's first kv head in the cache's token 0 row.
    ///   - positions: the position of every cache token (`first + rows` of them, ascending),
    ///     which a window is measured in; `nil` means token `i` is at position `i`. A cache
    ///     with tokens evicted has gaps, and a window then spans fewer tokens.
    ///   - out: `rows x (heads * headDim)` attention outputs.
    public static func causal(_ shape: AttentionShape, queries: UnsafeMutablePointer<Float>, queryStride: Int,
                              rows n: Int, first: Int, keys: UnsafeMutablePointer<Float>,
                              values: UnsafeMutablePointer<Float>, positions: [Int]? = nil,
                              out: UnsafeMutablePointer<Float>, observer: AttentionObserver? = nil) {
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
            let kPtr = keys.value + kv * hd + k0 * p
            let vPtr = values.value + kv * hd + k0 * p
            // Gathered queries and outputs: row j * m + r is query head kv * group + j, token i0 + r.
            let q = UnsafeMutablePointer<Float>.allocate(capacity: gm * hd)
            let o = UnsafeMutablePointer<Float>.allocate(capacity: gm * hd)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: gm * nk)
            defer { q.deallocate(); o.deallocate(); scores.deallocate() }
            for j in 0..<group {
                for r in 0..<m {
                    (q + (j * m + r) * hd).update(from: queries.value + (i0 + r) * queryStride + (kv * group + j) * hd, count: hd)
                }
            }
            BLAS.gemm(.normal, .transposed, m: gm, n: nk, k: hd, a: q, lda: hd,
                      b: kPtr, ldb: p, c: scores, ldc: nk)
            var inverse = [Float](repeating: 0, count: gm)
            for row in 0..<gm {
                // Query token `t` sees keys firstVisible(t) ... t.
                let t = first + i0 + row % m
                let lo = max(k0, firstVisible(t)) - k0, hi = t + 1 - k0
                let s = scores + row * nk
                let mx = FastMath.max(s + lo, count: hi - lo)
                let sum = FastMath.expShiftedSum(s + lo, count: hi - lo, scale: scale, shift: mx * scale)
                if lo > 0 { s.update(repeating: 0, count: lo) }
                if hi < nk { (s + hi).update(repeating: 0, count: nk - hi) }
                inverse[row] = 1 / sum
            }
            observer?.add(probabilities: scores, rows: gm, columns: nk, firstColumn: k0, rowScale: inverse)
            BLAS.gemm(.normal, .normal, m: gm, n: hd, k: nk, a: scores, lda: nk,
                      b: vPtr, ldb: p, c: o, ldc: hd)
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
