import Foundation
import KVTCCache
import KVTCGGUF
import KVTCNumerics
import KVTCTokenizers

/// A Gemma 3 text model (GGUF `general.architecture = gemma3`) running on the CPU, its
/// projections at a ``ModelPrecision`` (activations, norms, attention and the cache in f32).
///
/// What differs from Llama: embeddings scaled by `sqrt(embedding)`; RMS-normalised query and
/// key heads (QK-norm) before NeoX-style RoPE; attention scaled by `1/sqrt(headDim)`; the
/// attention and FFN outputs RMS-normalised again before each residual add; a GELU-gated FFN;
/// five sliding-window layers (their own RoPE base) for each global layer; and the output
/// projection tied to the embedding. The cache therefore differs by layer:
/// ``layerAttention`` reports each layer's rotation and window.
final class Gemma3Model: LanguageModel {
    let architecture = "gemma3"
    let config: Gemma3Config
    let geometry: KVGeometry
    /// The global layers' rotation (``layerAttention`` has every layer's).
    let rope: RoPE
    let layerAttention: [LayerAttention]
    let tokenizer: Tokenizer
    let chatTemplate: any ChatTemplate
    let identity: String
    let path: String
    let prefillChunk: Int
    let precision: ModelPrecision
    let weights: Gemma3Weights
    let attentionOutputEnergy: [[Float]]

    init(gguf: GGUFFile, path: String, options: ModelLoadOptions) throws(ModelError) {
        let config = try Gemma3Config(gguf: gguf)
        self.config = config
        do { tokenizer = try Tokenizer(gguf: gguf) } catch { throw .tokenizer(error) }
        guard tokenizer.vocabularySize == config.vocabularySize else {
            throw .badConfig("tokenizer has \(tokenizer.vocabularySize) tokens, embedding \(config.vocabularySize) rows")
        }
        geometry = KVGeometry(layers: config.layers, kvHeads: config.kvHeads, headDim: config.headDim)
        layerAttention = config.layerAttention
        rope = RoPE(layout: .half, theta: config.globalRopeTheta, rotaryDims: config.headDim)
        chatTemplate = options.chatTemplate ?? GemmaTemplate()
        identity = options.identity ?? URL(fileURLWithPath: path).lastPathComponent
        self.path = path
        prefillChunk = max(1, options.prefillChunk)
        _ = BLASThreads.configured
        precision = try options.resolvedPrecision()
        weights = try Gemma3Weights(gguf: gguf, config: config, precision: precision)
        attentionOutputEnergy = try weights.layers.map { (layer) throws(ModelError) in try layer.output.columnEnergy() }
    }

    var projections: [ProjectionShape] {
        ProjectionShape.gatedBlock(embedding: config.embedding, queryWidth: config.heads * config.headDim,
                                   keyValueWidth: config.kvHeads * config.headDim, feedForward: config.feedForward,
                                   vocabularySize: config.vocabularySize)
    }

    var dimensions: ModelDimensions {
        ModelDimensions(layers: config.layers, embedding: config.embedding, heads: config.heads,
                        kvHeads: config.kvHeads, headDim: config.headDim, vocabularySize: config.vocabularySize,
                        contextLength: config.contextLength, blockMatrixParameters: config.blockMatrixParameters)
    }

    func hiddenStates(tokens: [Int], cache: inout KVCache, startPosition: Int?,
                      rows: LogitsRequest, observer: AttentionObserver?) throws(ModelError) -> Matrix {
        let start = try validateForward(tokens: tokens, cache: cache, startPosition: startPosition)
        return try ChunkedForward.run(tokens: tokens, start: start, chunk: prefillChunk, embedding: config.embedding,
                                      rows: rows, finalNorm: weights.outputNorm, eps: config.rmsEpsilon,
                                      cache: &cache) { (chunk, positions, cache) throws(ModelError) in
            try forward(tokens: chunk, positions: positions, cache: &cache, observer: observer)
        }
    }

    func logits(hidden: Matrix) throws(ModelError) -> Matrix {
        try weights.output.apply(hidden)
    }

    /// Runs one chunk of tokens through every block, appending their keys and values to
    /// `cache`, and returns the residual stream after the last block (`n x embedding`).
    func forward(tokens: ArraySlice<Int>, positions: [Int], cache: inout KVCache,
                 observer: AttentionObserver? = nil) throws(ModelError) -> [Float] {
        let c = config
        let n = tokens.count, e = c.embedding, hd = c.headDim
        let qd = c.heads * hd, kvd = c.kvHeads * hd, qkvw = qd + 2 * kvd, f = c.feedForward
        let p = geometry.featuresPerToken
        let first = cache.appendZeroedTokens(positions: positions)
        // Windows are measured in positions (a cache with evicted tokens has gaps).
        let cachePositions = cache.positions
        // One rotation table per distinct layer rotation (two in Gemma 3).
        var tables: [RoPE: RoPE.Table] = [:]
        for a in layerAttention where tables[a.rope] == nil { tables[a.rope] = a.rope.table(positions: positions) }

        let buffers = ForwardBuffers()
        let X = buffers.make(n * e), Hs = buffers.make(n * e), Y = buffers.make(n * e), Q = buffers.make(n * qkvw)
        let A = buffers.make(n * qd), F = buffers.make(n * 2 * f), ACT = buffers.make(n * f)
        weights.tokenEmbedding.lookUp(tokens, scale: Float(e).squareRoot(), into: X)

        try cache.withMutableStreams(forward: { (K, V) throws(ModelError) in
            for l in 0..<c.layers {
                let w = weights.layers[l], attention = layerAttention[l]
                // Attention block.
                FastMath.rmsNormRows(X, weight: w.attentionNorm, eps: c.rmsEpsilon, out: Hs, rows: n, width: e)
                try w.qkv.apply(x: Hs, rows: n, y: Q, accumulate: false)
                // QK-norm: every query head and key head RMS-normalised on its own.
                Self.normalizeHeads(Q, rows: n, stride: qkvw, heads: c.heads, headDim: hd, weight: w.queryNorm, eps: c.rmsEpsilon)
                Self.normalizeHeads(Q + qd, rows: n, stride: qkvw, heads: c.kvHeads, headDim: hd, weight: w.keyNorm, eps: c.rmsEpsilon)
                if let observer, observer.recordsQueries { observer.addQueries(layer: l, Q, rows: n, stride: qkvw) }
                attention.rope.rotate(rows: Q, rowStride: qkvw, heads: c.heads + c.kvHeads, headDim: hd,
                                      table: tables[attention.rope]!, inverse: false)
                let kBase = K.baseAddress!, vBase = V.baseAddress!
                for r in 0..<n {
                    let row = (first + r) * p + l * kvd
                    (kBase + row).update(from: Q + r * qkvw + qd, count: kvd)
                    (vBase + row).update(from: Q + r * qkvw + qd + kvd, count: kvd)
                }
                let shape = AttentionShape(heads: c.heads, kvHeads: c.kvHeads, headDim: hd, cacheRowLength: p,
                                           scale: 1 / Float(hd).squareRoot(), window: attention.window)
                Attention.causal(shape, queries: Q, queryStride: qkvw, rows: n, first: first,
                                 keys: kBase + l * kvd, values: vBase + l * kvd,
                                 positions: attention.window == nil ? nil : cachePositions, out: A, observer: observer,
                                 precision: precision)
                try w.output.apply(x: A, rows: n, y: Y, accumulate: false)
                Self.addNormalized(Y, into: X, weight: w.postAttentionNorm, eps: c.rmsEpsilon, rows: n, width: e)
                // Feed-forward block.
                FastMath.rmsNormRows(X, weight: w.ffnNorm, eps: c.rmsEpsilon, out: Hs, rows: n, width: e)
                try GatedFeedForward.apply(Hs, rows: n, gateUp: w.gateUp, down: w.down, activation: .gelu,
                                           gateUpScratch: F, activatedScratch: ACT, into: Y, accumulate: false)
                Self.addNormalized(Y, into: X, weight: w.postFFNNorm, eps: c.rmsEpsilon, rows: n, width: e)
            }
        })
        return Array(UnsafeBufferPointer(start: X, count: n * e))
    }

    /// RMS-normalises, in place, `heads` consecutive heads of `headDim` in each of `rows`
    /// rows `stride` floats apart, all with one `weight`.
    static func normalizeHeads(_ base: UnsafeMutablePointer<Float>, rows: Int, stride: Int, heads: Int, headDim: Int,
                               weight: [Float], eps: Float) {
        weight.withUnsafeBufferPointer { w in
            for r in 0..<rows {
                for h in 0..<heads {
                    let x = base + r * stride + h * headDim
                    FastMath.rmsNorm(x, weight: w.baseAddress!, eps: eps, out: x, count: headDim)
                }
            }
        }
    }

    /// `x += rmsNorm(y) * weight`, row by row (`y` is overwritten).
    static func addNormalized(_ y: UnsafeMutablePointer<Float>, into x: UnsafeMutablePointer<Float>, weight: [Float],
                              eps: Float, rows: Int, width: Int) {
        FastMath.rmsNormRows(y, weight: weight, eps: eps, out: y, rows: rows, width: width)
        for i in 0..<(rows * width) { x[i] += y[i] }
    }
}
