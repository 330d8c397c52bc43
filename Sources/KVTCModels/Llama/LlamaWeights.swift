import KVTCGGUF
import KVTCNumerics

/// The weights of one transformer block, dequantized to f32, row-major `[out x in]`.
struct LlamaLayerWeights: Sendable {
    /// RMSNorm weight before attention.
    let attentionNorm: [Float]
    /// Q, K and V projections stacked: `(heads + 2 * kvHeads) * headDim` rows of `embedding`.
    let qkv: [Float]
    /// Attention output projection: `embedding` rows of `heads * headDim`.
    let output: [Float]
    /// RMSNorm weight before the FFN.
    let ffnNorm: [Float]
    /// Gate and up projections stacked: `2 * feedForward` rows of `embedding`.
    let gateUp: [Float]
    /// Down projection: `embedding` rows of `feedForward`.
    let down: [Float]
}

/// All weights of a llama model.
struct LlamaWeights: Sendable {
    let tokenEmbedding: [Float]
    let output: [Float]
    let outputNorm: [Float]
    let layers: [LlamaLayerWeights]

    init(gguf: GGUFFile, config c: LlamaConfig) throws(ModelError) {
        let tensors = GGUFTensors(gguf)
        let e = c.embedding, qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, f = c.feedForward
        tokenEmbedding = try tensors.stacked([("token_embd.weight", [e, c.vocabularySize])])
        if gguf.tensor(named: "output.weight") != nil {
            output = try tensors.stacked([("output.weight", [e, c.vocabularySize])])
        } else {
            output = tokenEmbedding // tied: shares storage
        }
        outputNorm = try tensors.stacked([("output_norm.weight", [e])])
        var layers: [LlamaLayerWeights] = []
        for l in 0..<c.layers {
            let p = "blk.\(l)."
            layers.append(LlamaLayerWeights(
                attentionNorm: try tensors.stacked([(p + "attn_norm.weight", [e])]),
                qkv: try tensors.stacked([(p + "attn_q.weight", [e, qd]), (p + "attn_k.weight", [e, kvd]),
                                  (p + "attn_v.weight", [e, kvd])]),
                output: try tensors.stacked([(p + "attn_output.weight", [qd, e])]),
                ffnNorm: try tensors.stacked([(p + "ffn_norm.weight", [e])]),
                gateUp: try tensors.stacked([(p + "ffn_gate.weight", [e, f]), (p + "ffn_up.weight", [e, f])]),
                down: try tensors.stacked([(p + "ffn_down.weight", [f, e])])))
        }
        self.layers = layers
    }
}
