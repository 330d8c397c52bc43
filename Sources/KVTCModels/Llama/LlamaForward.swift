import Foundation
import KVTCCache
import KVTCNumerics

extension LlamaModel {
    /// Runs one chunk of tokens through every block, appending their keys and values to
    /// `cache`, and returns the residual stream after the last block (`n x embedding`).
    func forward(tokens: ArraySlice<Int>, positions: [Int], cache: inout KVCache,
                 observer: AttentionObserver? = nil) throws(ModelError) -> [Float] {
        let c = config
        let n = tokens.count, e = c.embedding, hd = c.headDim
        let qd = c.heads * hd, kvd = c.kvHeads * hd, qkvw = qd + 2 * kvd, f = c.feedForward
        let p = geometry.featuresPerToken
        let first = cache.appendZeroedTokens(positions: positions)
        let rotation = rope.table(positions: positions)
        let shape = AttentionShape(heads: c.heads, kvHeads: c.kvHeads, headDim: hd, cacheRowLength: p,
                                   scale: 1 / Float(hd).squareRoot(), window: nil)

        let buffers = ForwardBuffers()
        let X = buffers.make(n * e), Hs = buffers.make(n * e), Q = buffers.make(n * qkvw)
        let A = buffers.make(n * qd), F = buffers.make(n * 2 * f), ACT = buffers.make(n * f)
        weights.tokenEmbedding.lookUp(tokens, into: X)

        try cache.withMutableStreams(forward: { (K, V) throws(ModelError) in
            for l in 0..<c.layers {
                let w = weights.layers[l]
                // Attention block.
                FastMath.rmsNormRows(X, weight: w.attentionNorm, eps: c.rmsEpsilon, out: Hs, rows: n, width: e)
                try w.qkv.apply(x: Hs, rows: n, y: Q, accumulate: false)
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
                                 keys: kBase + l * kvd, values: vBase + l * kvd, out: A, observer: observer,
                                 precision: precision)
                try w.output.apply(x: A, rows: n, y: X, accumulate: true)
                // Feed-forward block.
                FastMath.rmsNormRows(X, weight: w.ffnNorm, eps: c.rmsEpsilon, out: Hs, rows: n, width: e)
                try GatedFeedForward.apply(Hs, rows: n, gateUp: w.gateUp, down: w.down, activation: .silu,
                                           gateUpScratch: F, activatedScratch: ACT, into: X, accumulate: true)
            }
        })
        return Array(UnsafeBufferPointer(start: X, count: n * e))
    }
}
