import KVTCGGUF

/// Hyperparameters of a llama-architecture model, read from GGUF metadata.
public struct LlamaConfig: Sendable, Equatable, Codable {
    /// Transformer blocks (`llama.block_count`).
    public var layers: Int
    /// Model width (`llama.embedding_length`).
    public var embedding: Int
    /// FFN hidden width (`llama.feed_forward_length`).
    public var feedForward: Int
    /// Query heads (`llama.attention.head_count`).
    public var heads: Int
    /// Key/value heads (`llama.attention.head_count_kv`).
    public var kvHeads: Int
    /// Dimension of one head (`embedding / heads`).
    public var headDim: Int
    /// Rotated dimensions per head (`llama.rope.dimension_count`, default `headDim`).
    public var rotaryDims: Int
    /// RoPE base (`llama.rope.freq_base`, default 10000).
    public var ropeTheta: Double
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    public var rmsEpsilon: Float
    /// Trained context length (`llama.context_length`).
    public var contextLength: Int
    /// Vocabulary size (rows of `token_embd`).
    public var vocabularySize: Int

    /// Reads the configuration of a llama GGUF file.
    public init(gguf: GGUFFile) throws(ModelError) {
        let arch = gguf.metadata["general.architecture"]?.stringValue ?? "llama"
        guard arch == "llama" else { throw .unsupportedArchitecture(arch, supported: ["llama"]) }
        func int(_ k: String) throws(ModelError) -> Int {
            do { return try gguf.int("llama." + k) } catch { throw .gguf(error) }
        }
        layers = try int("block_count")
        embedding = try int("embedding_length")
        feedForward = try int("feed_forward_length")
        heads = try int("attention.head_count")
        kvHeads = (try? gguf.int("llama.attention.head_count_kv")) ?? heads
        guard layers > 0, embedding > 0, feedForward > 0, heads > 0, kvHeads > 0,
              embedding % heads == 0, heads % kvHeads == 0 else {
            throw .badConfig("layers \(layers), width \(embedding), ffn \(feedForward), heads \(heads)/\(kvHeads)")
        }
        headDim = embedding / heads
        rotaryDims = (try? gguf.int("llama.rope.dimension_count")) ?? headDim
        ropeTheta = (try? gguf.double("llama.rope.freq_base")) ?? 10000
        rmsEpsilon = Float((try? gguf.double("llama.attention.layer_norm_rms_epsilon")) ?? 1e-5)
        contextLength = (try? gguf.int("llama.context_length")) ?? 2048
        guard rotaryDims > 0, rotaryDims <= headDim, rotaryDims % 2 == 0 else {
            throw .badConfig("rotary dims \(rotaryDims) for head dim \(headDim)")
        }
        guard ropeTheta.isFinite, ropeTheta > 1, rmsEpsilon.isFinite, rmsEpsilon > 0 else {
            throw .badConfig("RoPE base \(ropeTheta), RMS epsilon \(rmsEpsilon)")
        }
        guard let embd = gguf.tensor(named: "token_embd.weight"), embd.dimensions.count == 2,
              embd.dimensions[0] == embedding else {
            throw .badConfig("token_embd.weight missing or not \(embedding) wide")
        }
        vocabularySize = embd.dimensions[1]
    }

    /// Parameters in the transformer blocks' matrices (what a token's matmuls touch,
    /// excluding the output projection).
    public var blockMatrixParameters: Int {
        let q = embedding * heads * headDim
        let kv = 2 * embedding * kvHeads * headDim
        let o = heads * headDim * embedding
        let ffn = 3 * embedding * feedForward
        return layers * (q + kv + o + ffn)
    }
}
