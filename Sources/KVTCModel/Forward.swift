import Foundation
import KVTCCache
import KVTCNumerics

/// Mutable pointers that cross into ``Parallel`` loops writing disjoint regions.
struct SendablePointers: @unchecked Sendable {
    let a: UnsafeMutablePointer<Float>
    let b: UnsafeMutablePointer<Float>
    let c: UnsafeMutablePointer<Float>
    let d: UnsafeMutablePointer<Float>
}

extension LlamaModel {
    /// Runs one chunk of tokens through every block, appending their keys and values to
    /// `cache`, and returns the residual stream after the last block (`n x embedding`).
    func forward(tokens: ArraySlice<Int>, positions: [Int], cache: inout KVCache,
                 observer: AttentionObserver? = nil) -> [Float] {
        let c = config
        let n = tokens.count, e = c.embedding, hd = c.headDim
        let qd = c.heads * hd, kvd = c.kvHeads * hd, qkvw = qd + 2 * kvd, f = c.feedForward
        let p = geometry.featuresPerToken
        let first = cache.appendZeroedTokens(positions: positions)

        var x = [Float](repeating: 0, count: n * e)
        var h = [Float](repeating: 0, count: n * e)
        var qkv = [Float](repeating: 0, count: n * qkvw)
        var att = [Float](repeating: 0, count: n * qd)
        var ff = [Float](repeating: 0, count: n * 2 * f)
        var act = [Float](repeating: 0, count: n * f)
        let (cosT, sinT) = ropeTables(positions: positions)

        weights.tokenEmbedding.withUnsafeBufferPointer { emb in
            x.withUnsafeMutableBufferPointer { xb in
                for (r, t) in tokens.enumerated() {
                    (xb.baseAddress! + r * e).update(from: emb.baseAddress! + t * e, count: e)
                }
            }
        }

        cache.withMutableStreams { K, V in
            x.withUnsafeMutableBufferPointer { xb in
            h.withUnsafeMutableBufferPointer { hb in
            qkv.withUnsafeMutableBufferPointer { qb in
            att.withUnsafeMutableBufferPointer { ab in
            ff.withUnsafeMutableBufferPointer { fb in
            act.withUnsafeMutableBufferPointer { actb in
                let X = xb.baseAddress!, Hs = hb.baseAddress!, Q = qb.baseAddress!
                let A = ab.baseAddress!, F = fb.baseAddress!, ACT = actb.baseAddress!
                for l in 0..<c.layers {
                    let w = weights.layers[l]
                    // Attention block.
                    rmsNormRows(X, weight: w.attentionNorm, out: Hs, rows: n)
                    w.qkv.withUnsafeBufferPointer { W in
                        Linear.apply(x: Hs, rows: n, weight: W.baseAddress!, outFeatures: qkvw,
                                     inFeatures: e, y: Q, accumulate: false)
                    }
                    // Rotate queries and keys (adjacent in each row) in place.
                    applyRoPE(Q, rowStride: qkvw, heads: c.heads + c.kvHeads, rows: n, cos: cosT, sin: sinT)
                    // Store this layer's keys and values in the cache.
                    let kBase = K.baseAddress!, vBase = V.baseAddress!
                    for r in 0..<n {
                        let row = (first + r) * p + l * kvd
                        (kBase + row).update(from: Q + r * qkvw + qd, count: kvd)
                        (vBase + row).update(from: Q + r * qkvw + qd + kvd, count: kvd)
                    }
                    attention(layer: l, qkv: Q, rows: n, first: first, keys: kBase, values: vBase, out: A,
                              observer: observer)
                    w.output.withUnsafeBufferPointer { W in
                        Linear.apply(x: A, rows: n, weight: W.baseAddress!, outFeatures: e,
                                     inFeatures: qd, y: X, accumulate: true)
                    }
                    // Feed-forward block.
                    rmsNormRows(X, weight: w.ffnNorm, out: Hs, rows: n)
                    w.gateUp.withUnsafeBufferPointer { W in
                        Linear.apply(x: Hs, rows: n, weight: W.baseAddress!, outFeatures: 2 * f,
                                     inFeatures: e, y: F, accumulate: false)
                    }
                    let ptrs = SendablePointers(a: F, b: ACT, c: F, d: F)
                    Parallel.forEachRange(n, minimumPerTask: 32) { range in
                        for r in range {
                            FastMath.swiglu(gate: ptrs.a + r * 2 * f, up: ptrs.a + r * 2 * f + f,
                                            out: ptrs.b + r * f, count: f)
                        }
                    }
                    w.down.withUnsafeBufferPointer { W in
                        Linear.apply(x: ACT, rows: n, weight: W.baseAddress!, outFeatures: e,
                                     inFeatures: f, y: X, accumulate: true)
                    }
                }
            }}}}}}
        }
        return x
    }

    /// RMS-normalises `rows` rows of `embedding` values.
    func rmsNormRows(_ x: UnsafeMutablePointer<Float>, weight: [Float], out: UnsafeMutablePointer<Float>, rows: Int) {
        let e = config.embedding, eps = config.rmsEpsilon
        weight.withUnsafeBufferPointer { w in
            let ptrs = SendablePointers(a: x, b: out, c: UnsafeMutablePointer(mutating: w.baseAddress!), d: x)
            Parallel.forEachRange(rows, minimumPerTask: 64) { range in
                for r in range {
                    FastMath.rmsNorm(ptrs.a + r * e, weight: ptrs.c, eps: eps, out: ptrs.b + r * e, count: e)
                }
            }
        }
    }

    /// Cosines and sines (`positions.count x rotaryDims/2`), computed exactly as
    /// ``RoPE/rotate(rows:rowLength:positions:headDim:inverse:)`` does, so keys written
    /// here and keys re-rotated by the codec agree bit for bit.
    func ropeTables(positions: [Int]) -> ([Float], [Float]) {
        let pairs = rope.rotaryDims / 2
        let freqs = (0..<pairs).map { pow(rope.theta, -2.0 * Double($0) / Double(rope.rotaryDims)) }
        var cosT = [Float](repeating: 0, count: positions.count * pairs)
        var sinT = [Float](repeating: 0, count: positions.count * pairs)
        for (t, pos) in positions.enumerated() {
            for i in 0..<pairs {
                let a = Double(pos) * freqs[i]
                cosT[t * pairs + i] = Float(cos(a))
                sinT[t * pairs + i] = Float(sin(a))
            }
        }
        return (cosT, sinT)
    }

    /// Rotates the first `heads` heads of each row by interleaved pairs `(2i, 2i+1)`.
    func applyRoPE(_ x: UnsafeMutablePointer<Float>, rowStride: Int, heads: Int, rows: Int,
                   cos cosT: [Float], sin sinT: [Float]) {
        let hd = config.headDim, pairs = rope.rotaryDims / 2
        cosT.withUnsafeBufferPointer { cb in
            sinT.withUnsafeBufferPointer { sb in
                let ptrs = SendablePointers(a: x, b: UnsafeMutablePointer(mutating: cb.baseAddress!),
                                            c: UnsafeMutablePointer(mutating: sb.baseAddress!), d: x)
                Parallel.forEachRange(rows, minimumPerTask: 64) { range in
                    for r in range {
                        let cs = ptrs.b + r * pairs, sn = ptrs.c + r * pairs
                        for hIdx in 0..<heads {
                            let v = ptrs.a + r * rowStride + hIdx * hd
                            for i in 0..<pairs {
                                let a = v[2 * i], b = v[2 * i + 1]
                                v[2 * i] = a * cs[i] - b * sn[i]
                                v[2 * i + 1] = a * sn[i] + b * cs[i]
                            }
                        }
                    }
                }
            }
        }
    }

    /// Causal grouped-query attention of `rows` new queries (in `qkv`, row stride
    /// `qkvWidth`) against cache tokens `0 ..< first + rows` of layer `layer`.
    ///
    /// Work is split into (kv head, query block) tasks run in parallel with single-threaded
    /// BLAS. Each task gathers the queries of every query head sharing its kv head into one
    /// `group * block x headDim` matrix, so each key and value row is read once per group:
    /// `S = Q K^T` by GEMM straight from the cache's strided rows, a masked softmax, and
    /// `O = P V` by GEMM.
    func attention(layer l: Int, qkv: UnsafeMutablePointer<Float>, rows n: Int, first: Int,
                   keys: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>,
                   out: UnsafeMutablePointer<Float>, observer: AttentionObserver? = nil) {
        let c = config
        let hd = c.headDim, heads = c.heads, kvHeads = c.kvHeads, group = heads / kvHeads
        let qd = heads * hd, qkvw = qd + 2 * kvHeads * hd
        let p = geometry.featuresPerToken
        let block = n == 1 ? 1 : 64
        let blocks = (n + block - 1) / block
        let scale = 1 / Float(hd).squareRoot()
        let ptrs = SendablePointers(a: qkv, b: keys, c: values, d: out)
        BLAS.setThreadCount(1)
        defer { BLAS.setThreadCount(BLASThreads.configured) }
        // Largest blocks (latest queries) first for better balance.
        Parallel.forEach(kvHeads * blocks) { task in
            let kv = task % kvHeads
            let b = blocks - 1 - task / kvHeads
            let i0 = b * block, i1 = min(n, i0 + block), m = i1 - i0
            let gm = group * m
            let nk = first + i1
            let kPtr = ptrs.b + (l * kvHeads + kv) * hd
            let vPtr = ptrs.c + (l * kvHeads + kv) * hd
            // Gathered queries and outputs: row j * m + r is query head kv * group + j, token i0 + r.
            let q = UnsafeMutablePointer<Float>.allocate(capacity: gm * hd)
            let o = UnsafeMutablePointer<Float>.allocate(capacity: gm * hd)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: gm * nk)
            defer { q.deallocate(); o.deallocate(); scores.deallocate() }
            for j in 0..<group {
                for r in 0..<m {
                    (q + (j * m + r) * hd).update(from: ptrs.a + (i0 + r) * qkvw + (kv * group + j) * hd, count: hd)
                }
            }
            BLAS.gemm(.normal, .transposed, m: gm, n: nk, k: hd, a: q, lda: hd,
                      b: kPtr, ldb: p, c: scores, ldc: nk)
            var inverse = [Float](repeating: 0, count: gm)
            for row in 0..<gm {
                let valid = first + i0 + row % m + 1
                let s = scores + row * nk
                let mx = FastMath.max(s, count: valid)
                let sum = FastMath.expShiftedSum(s, count: valid, scale: scale, shift: mx * scale)
                if valid < nk { (s + valid).update(repeating: 0, count: nk - valid) }
                inverse[row] = 1 / sum
            }
            observer?.add(probabilities: scores, rows: gm, columns: nk, rowScale: inverse)
            BLAS.gemm(.normal, .normal, m: gm, n: hd, k: nk, a: scores, lda: nk,
                      b: vPtr, ldb: p, c: o, ldc: hd)
            for j in 0..<group {
                for r in 0..<m {
                    let src = o + (j * m + r) * hd
                    let dst = ptrs.d + (i0 + r) * qd + (kv * group + j) * hd
                    let inv = inverse[j * m + r]
                    for i in 0..<hd { dst[i] = src[i] * inv }
                }
            }
        }
    }
}
