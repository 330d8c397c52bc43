import KVTCGGUF
import KVTCNumerics

/// The weights of one Gemma 3 block: norms in f32, projections (row-major `[out x in]`) at
/// the model's precision. Norm weights are used as stored: the GGUF converter has already
/// added Gemma's `1 +`.
struct Gemma3LayerWeights: Sendable {
    /// RMSNorm before attention.
    let attentionNorm: [Float]
    /// Q, K and V projections stacked: `(heads + 2 * kvHeads) * headDim` rows of `embedding`.
    let qkv: LinearWeight
    /// RMSNorm of each query head and of each key head (`headDim` each).
    let queryNorm: [Float]
    let keyNorm: [Float]
    /// Attention output projection: `embedding` rows of `heads * headDim`.
    let output: LinearWeight
    /// RMSNorm of the attention output before the residual add.
    let postAttentionNorm: [Float]
    /// RMSNorm before the FFN.
    let ffnNorm: [Float]
    /// Gate and up projections stacked: `2 * feedForward` rows of `embedding`.
    let gateUp: LinearWeight
    /// Down projection: `embedding` rows of `feedForward`.
    let down: LinearWeight
    /// RMSNorm of the FFN output before the residual add.
    let postFFNNorm: [Float]
}

/// All weights of a Gemma 3 model; the output projection is the token embedding (tied).
struct Gemma3Weights: Sendable {
    let tokenEmbedding: TokenEmbedding
    /// The tied output projection (the embedding's values).
    let output: LinearWeight
    let outputNorm: [Float]
    let layers: [Gemma3LayerWeights]

    init(gguf: GGUFFile, config c: Gemma3Config, precision: ModelPrecision) throws(ModelError) {
        let tensors = GGUFTensors(gguf)
        let e = c.embedding, qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, f = c.feedForward, hd = c.headDim
        func linear(_ parts: [(String, [Int])], out: Int, in inFeatures: Int) throws(ModelError) -> LinearWeight {
            try tensors.linear(parts, out: out, in: inFeatures, precision: precision)
        }
        if gguf.tensor(named: "output.weight") != nil {
            throw .badConfig("a separate output.weight: Gemma 3 ties its output projection to the embedding")
        }
        let embedding = try tensors.stacked([("token_embd.weight", [e, c.vocabularySize])])
        tokenEmbedding = try TokenEmbedding(embedding, vocabularySize: c.vocabularySize, embedding: e, precision: precision)
        output = try LinearWeight(embedding, outFeatures: c.vocabularySize, inFeatures: e, precision: precision)
        outputNorm = try tensors.stacked([("output_norm.weight", [e])])
        var layers: [Gemma3LayerWeights] = []
        for l in 0..<c.layers {
            let p = "blk.\(l)."
            layers.append(Gemma3LayerWeights(
                attentionNorm: try tensors.stacked([(p + "attn_norm.weight", [e])]),
                qkv: try linear([(p + "attn_q.weight", [e, qd]), (p + "attn_k.weight", [e, kvd]),
                                 (p + "attn_v.weight", [e, kvd])], out: qd + 2 * kvd, in: e),
                queryNorm: try tensors.stacked([(p + "attn_q_norm.weight", [hd])]),
                keyNorm: try tensors.stacked([(p + "attn_k_norm.weight", [hd])]),
                output: try linear([(p + "attn_output.weight", [qd, e])], out: e, in: qd),
                postAttentionNorm: try tensors.stacked([(p + "post_attention_norm.weight", [e])]),
                ffnNorm: try tensors.stacked([(p + "ffn_norm.weight", [e])]),
                gateUp: try linear([(p + "ffn_gate.weight", [e, f]), (p + "ffn_up.weight", [e, f])], out: 2 * f, in: e),
                down: try linear([(p + "ffn_down.weight", [f, e])], out: e, in: f),
                postFFNNorm: try tensors.stacked([(p + "post_ffw_norm.weight", [e])])))
        }
        self.layers = layers
    }
}
