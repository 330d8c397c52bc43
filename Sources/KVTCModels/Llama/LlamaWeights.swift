import KVTCGGUF
import KVTCNumerics

/// The weights of one transformer block: norms in f32, projections (row-major
/// `[out x in]`) at the model's precision.
struct LlamaLayerWeights: Sendable {
    /// RMSNorm weight before attention.
    let attentionNorm: [Float]
    /// Q, K and V projections stacked: `(heads + 2 * kvHeads) * headDim` rows of `embedding`.
    let qkv: LinearWeight
    /// Attention output projection: `embedding` rows of `heads * headDim`.
    let output: LinearWeight
    /// RMSNorm weight before the FFN.
    let ffnNorm: [Float]
    /// Gate and up projections stacked: `2 * feedForward` rows of `embedding`.
    let gateUp: LinearWeight
    /// Down projection: `embedding` rows of `feedForward`.
    let down: LinearWeight
}

/// All weights of a llama model.
struct LlamaWeights: Sendable {
    let tokenEmbedding: TokenEmbedding
    let output: LinearWeight
    let outputNorm: [Float]
    let layers: [LlamaLayerWeights]

    init(gguf: GGUFFile, config c: LlamaConfig, precision: ModelPrecision) throws(ModelError) {
        let tensors = GGUFTensors(gguf)
        let e = c.embedding, qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, f = c.feedForward
        func linear(_ parts: [(String, [Int])], out: Int, in inFeatures: Int) throws(ModelError) -> LinearWeight {
            try tensors.linear(parts, out: out, in: inFeatures, precision: precision)
        }
        let embedding = try tensors.stacked([("token_embd.weight", [e, c.vocabularySize])])
        tokenEmbedding = try TokenEmbedding(embedding, vocabularySize: c.vocabularySize, embedding: e, precision: precision)
        if gguf.tensor(named: "output.weight") != nil {
            output = try linear([("output.weight", [e, c.vocabularySize])], out: c.vocabularySize, in: e)
        } else {
            // Tied to the embedding (in f32 the two share storage).
            output = try LinearWeight(embedding, outFeatures: c.vocabularySize, inFeatures: e, precision: precision)
        }
        outputNorm = try tensors.stacked([("output_norm.weight", [e])])
        var layers: [LlamaLayerWeights] = []
        for l in 0..<c.layers {
            let p = "blk.\(l)."
            layers.append(LlamaLayerWeights(
                attentionNorm: try tensors.stacked([(p + "attn_norm.weight", [e])]),
                qkv: try linear([(p + "attn_q.weight", [e, qd]), (p + "attn_k.weight", [e, kvd]),
                                 (p + "attn_v.weight", [e, kvd])], out: qd + 2 * kvd, in: e),
                output: try linear([(p + "attn_output.weight", [qd, e])], out: e, in: qd),
                ffnNorm: try tensors.stacked([(p + "ffn_norm.weight", [e])]),
                gateUp: try linear([(p + "ffn_gate.weight", [e, f]), (p + "ffn_up.weight", [e, f])], out: 2 * f, in: e),
                down: try linear([(p + "ffn_down.weight", [f, e])], out: e, in: f)))
        }
        self.layers = layers
    }
}
