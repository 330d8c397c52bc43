import KVTCCache
import KVTCGGUF

/// Hyperparameters of a Gemma 3 text model, read from GGUF metadata (`gemma3.*`).
///
/// Gemma 3 interleaves sliding-window layers with global ones: every `globalEvery`-th layer
/// (layers 5, 11, 17 of 18 in the 270M model) attends to the whole context with the file's
/// RoPE base, the others to their last ``slidingWindow`` tokens with RoPE base 10,000.
public struct Gemma3Config: Sendable, Equatable, Codable {
    /// Transformer blocks (`block_count`).
    public var layers: Int
    /// Model width (`embedding_length`).
    public var embedding: Int
    /// FFN hidden width (`feed_forward_length`).
    public var feedForward: Int
    /// Query heads (`attention.head_count`).
    public var heads: Int
    /// Key/value heads (`attention.head_count_kv`).
    public var kvHeads: Int
    /// Dimension of one head (`attention.key_length`, which `value_length` must equal).
    public var headDim: Int
    /// RoPE base of the global layers (`rope.freq_base`, default 1,000,000).
    public var globalRopeTheta: Double
    /// RoPE base of the sliding layers (10,000 in every Gemma 3; not in the metadata).
    public var slidingRopeTheta: Double
    /// Tokens a sliding layer's query sees, itself included (`attention.sliding_window`).
    public var slidingWindow: Int
    /// One layer in this many is global (the last of each group); Gemma 3 uses 6.
    public var globalEvery: Int
    /// RMSNorm epsilon (`attention.layer_norm_rms_epsilon`).
    public var rmsEpsilon: Float
    /// Trained context length (`context_length`).
    public var contextLength: Int
    /// Vocabulary size (rows of `token_embd`).
    public var vocabularySize: Int

    /// Reads the configuration of a gemma3 GGUF file.
    public init(gguf: GGUFFile) throws(ModelError) {
        let arch = gguf.metadata["general.architecture"]?.stringValue ?? ""
        guard arch == "gemma3" else { throw .unsupportedArchitecture(arch, supported: ["gemma3"]) }
        func int(_ k: String) throws(ModelError) -> Int {
            do { return try gguf.int("gemma3." + k) } catch { throw .gguf(error) }
        }
        layers = try int("block_count")
        embedding = try int("embedding_length")
        feedForward = try int("feed_forward_length")
        heads = try int("attention.head_count")
        kvHeads = (try? gguf.int("gemma3.attention.head_count_kv")) ?? heads
        headDim = try int("attention.key_length")
        let valueLength = (try? gguf.int("gemma3.attention.value_length")) ?? headDim
        guard layers > 0, embedding > 0, feedForward > 0, heads > 0, kvHeads > 0, heads % kvHeads == 0,
              headDim > 0, headDim % 2 == 0, valueLength == headDim else {
            throw .badConfig("layers \(layers), width \(embedding), ffn \(feedForward), heads \(heads)/\(kvHeads), head dims \(headDim)/\(valueLength)")
        }
        globalRopeTheta = (try? gguf.double("gemma3.rope.freq_base")) ?? 1_000_000
        slidingRopeTheta = 10_000
        slidingWindow = try int("attention.sliding_window")
        globalEvery = 6
        rmsEpsilon = Float((try? gguf.double("gemma3.attention.layer_norm_rms_epsilon")) ?? 1e-6)
        contextLength = (try? gguf.int("gemma3.context_length")) ?? 32768
        if let factor = try? gguf.double("gemma3.rope.scaling.factor"), factor != 1 {
            throw .badConfig("RoPE scaling (factor \(factor)) is not implemented")
        }
        guard slidingWindow > 0, globalRopeTheta.isFinite, globalRopeTheta > 1, rmsEpsilon.isFinite, rmsEpsilon > 0 else {
            throw .badConfig("sliding window \(slidingWindow), RoPE base \(globalRopeTheta), RMS epsilon \(rmsEpsilon)")
        }
        guard let embd = gguf.tensor(named: "token_embd.weight"), embd.dimensions.count == 2,
              embd.dimensions[0] == embedding else {
            throw .badConfig("token_embd.weight missing or not \(embedding) wide")
        }
        vocabularySize = embd.dimensions[1]
    }

    /// Whether layer `l` attends to the whole context.
    public func isGlobal(_ l: Int) -> Bool { l % globalEvery == globalEvery - 1 }

    /// Per layer: NeoX-style (half-split) RoPE with the layer's base, and the window of
    /// sliding layers.
    public var layerAttention: [LayerAttention] {
        (0..<layers).map { l in
            isGlobal(l)
                ? LayerAttention(rope: RoPE(layout: .half, theta: globalRopeTheta, rotaryDims: headDim), window: nil)
                : LayerAttention(rope: RoPE(layout: .half, theta: slidingRopeTheta, rotaryDims: headDim), window: slidingWindow)
        }
    }

    /// Parameters in the transformer blocks' matrices (the output projection excluded).
    public var blockMatrixParameters: Int {
        let q = embedding * heads * headDim
        let kv = 2 * embedding * kvHeads * headDim
        let o = heads * headDim * embedding
        let ffn = 3 * embedding * feedForward
        return layers * (q + kv + o + ffn)
    }
}
