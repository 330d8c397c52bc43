import Foundation
import KVTCCache
import KVTCNumerics

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
        let rotation = rope.table(positions: positions)
        let shape = AttentionShape(heads: c.heads, kvHeads: c.kvHeads, headDim: hd, cacheRowLength: p,
                                   scale: 1 / Float(hd).squareRoot(), window: nil)

        var x = [Float](repeating: 0, count: n * e)
        var h = [Float](repeating: 0, count: n * e)
        var qkv = [Float](repeating: 0, count: n * qkvw)
        var att = [Float](repeating: 0, count: n * qd)
        var ff = [Float](repeating: 0, count: n * 2 * f)
        var act = [Float](repeating: 0, count: n * f)

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
                    FastMath.rmsNormRows(X, weight: w.attentionNorm, eps: c.rmsEpsilon, out: Hs, rows: n, width: e)
                    w.qkv.withUnsafeBufferPointer { W in
                        Linear.apply(x: Hs, rows: n, weight: W.baseAddress!, outFeatures: qkvw,
                                     inFeatures: e, y: Q, accumulate: false)
                    }
                    if let observer, observer.recordsQueries { observer.addQueries(layer: l, Q, rows: n, stride: qkvw) }
                    // Rotate queries and keys (adjacent heads in each row) in place.
                    rope.rotate(rows: Q, rowStride: qkvw, heads: c.heads + c.kvHeads, headDim: hd,
                                table: rotation, inverse: false)
                    // Store this layer's keys and values in the cache.
                    let kBase = K.baseAddress!, vBase = V.baseAddress!
                    for r in 0..<n {
                        let row = (first + r) * p + l * kvd
                        (kBase + row).update(from: Q + r * qkvw + qd, count: kvd)
                        (vBase + row).update(from: Q + r * qkvw + qd + kvd, count: kvd)
                    }
                    Attention.causal(shape, queries: Q, queryStride: qkvw, rows: n, first: first,
                                     keys: kBase + l * kvd, values: vBase + l * kvd, out: A, observer: observer)
                    w.output.withUnsafeBufferPointer { W in
                        Linear.apply(x: A, rows: n, weight: W.baseAddress!, outFeatures: e,
                                     inFeatures: qd, y: X, accumulate: true)
                    }
                    // Feed-forward block.
                    FastMath.rmsNormRows(X, weight: w.ffnNorm, eps: c.rmsEpsilon, out: Hs, rows: n, width: e)
                    w.gateUp.withUnsafeBufferPointer { W in
                        Linear.apply(x: Hs, rows: n, weight: W.baseAddress!, outFeatures: 2 * f,
                                     inFeatures: e, y: F, accumulate: false)
                    }
                    let gateUp = UncheckedSendable(F), activated = UncheckedSendable(ACT)
                    Parallel.forEachRange(n, minimumPerTask: 32) { range in
                        for r in range {
                            FastMath.swiglu(gate: gateUp.value + r * 2 * f, up: gateUp.value + r * 2 * f + f,
                                            out: activated.value + r * f, count: f)
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
}
