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
        func info(_ name: String, _ shape: [Int]) throws(ModelError) -> GGUFTensorInfo {
            guard let t = gguf.tensor(named: name) else { throw .gguf(.missing("tensor \(name)")) }
            guard t.dimensions == shape else { throw .badWeight(name: name, expected: shape, actual: t.dimensions) }
            return t
        }
        /// Dequantizes the tensors `parts` into one stacked array.
        func stacked(_ parts: [(String, [Int])]) throws(ModelError) -> [Float] {
            var infos: [GGUFTensorInfo] = []
            for (n, s) in parts { infos.append(try info(n, s)) }
            let total = infos.reduce(0) { $0 + $1.elementCount }
            return [Float](unsafeUninitializedCapacity: total) { buf, count in
                var offset = 0
                for t in infos {
                    Dequantize.rows(gguf.rawBytes(of: t), type: t.type, count: t.elementCount,
                                    into: buf.baseAddress! + offset)
                    offset += t.elementCount
                }
                count = total
            }
        }
        let e = c.embedding, qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, f = c.feedForward
        tokenEmbedding = try stacked([("token_embd.weight", [e, c.vocabularySize])])
        if gguf.tensor(named: "output.weight") != nil {
            output = try stacked([("output.weight", [e, c.vocabularySize])])
        } else {
            output = tokenEmbedding // tied: shares storage
        }
        outputNorm = try stacked([("output_norm.weight", [e])])
        var layers: [LlamaLayerWeights] = []
        for l in 0..<c.layers {
            let p = "blk.\(l)."
            layers.append(LlamaLayerWeights(
                attentionNorm: try stacked([(p + "attn_norm.weight", [e])]),
                qkv: try stacked([(p + "attn_q.weight", [e, qd]), (p + "attn_k.weight", [e, kvd]),
                                  (p + "attn_v.weight", [e, kvd])]),
                output: try stacked([(p + "attn_output.weight", [qd, e])]),
                ffnNorm: try stacked([(p + "ffn_norm.weight", [e])]),
                gateUp: try stacked([(p + "ffn_gate.weight", [e, f]), (p + "ffn_up.weight", [e, f])]),
                down: try stacked([(p + "ffn_down.weight", [f, e])])))
        }
        self.layers = layers
    }
}
