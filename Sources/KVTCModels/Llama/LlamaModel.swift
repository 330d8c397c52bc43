import Foundation
import KVTCCache
import KVTCGGUF
import KVTCNumerics
import KVTCTokenizers

/// A llama-architecture language model (GGUF `general.architecture = llama`; SmolLM2 is
/// one) running on the CPU, its projections at a ``ModelPrecision`` (activations, norms,
/// attention and the cache in f32).
///
/// Weights are dequantized from GGUF at load and never change, so one instance may serve
/// many threads. All per-sequence state lives in the caller's ``KVCache``.
///
/// Threads: GEMMs use OpenBLAS's own threads; attention runs (kv head, query block) tasks on
/// ``Parallel`` with OpenBLAS switched to one thread for the duration, then restores the
/// thread count OpenBLAS had when the first model was loaded. Running two forward passes at
/// once is safe but may briefly leave BLAS single-threaded for the other.
final class LlamaModel: LanguageModel {
    let architecture = "llama"
    /// Hyperparameters.
    let config: LlamaConfig
    let geometry: KVGeometry
    /// Keys are rotated by interleaved pairs, as llama.cpp does for GGUF llama weights.
    let rope: RoPE
    let tokenizer: Tokenizer
    let chatTemplate: any ChatTemplate
    let identity: String
    let path: String
    let prefillChunk: Int
    let precision: ModelPrecision
    let weights: LlamaWeights
    let attentionOutputEnergy: [[Float]]

    /// Loads a llama GGUF file, dequantizing every weight and keeping the projections at
    /// the options' precision.
    init(gguf: GGUFFile, path: String, options: ModelLoadOptions) throws(ModelError) {
        let config = try LlamaConfig(gguf: gguf)
        self.config = config
        do { tokenizer = try Tokenizer(gguf: gguf) } catch { throw .tokenizer(error) }
        guard tokenizer.vocabularySize == config.vocabularySize else {
            throw .badConfig("tokenizer has \(tokenizer.vocabularySize) tokens, embedding \(config.vocabularySize) rows")
        }
        geometry = KVGeometry(layers: config.layers, kvHeads: config.kvHeads, headDim: config.headDim)
        rope = RoPE(layout: .interleaved, theta: config.ropeTheta, rotaryDims: config.rotaryDims)
        chatTemplate = options.chatTemplate ?? ChatMLTemplate()
        identity = options.identity ?? URL(fileURLWithPath: path).lastPathComponent
        self.path = path
        prefillChunk = max(1, options.prefillChunk)
        _ = BLASThreads.configured
        precision = try options.resolvedPrecision()
        weights = try LlamaWeights(gguf: gguf, config: config, precision: precision)
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


    /// Every layer is global and rotated alike.
    var layerAttention: [LayerAttention] {
        Array(repeating: LayerAttention(rope: rope, window: nil), count: config.layers)
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
}
