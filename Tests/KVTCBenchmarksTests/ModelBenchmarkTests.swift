import KVTCBenchmarks
import KVTCModels
import Testing

@Suite struct ModelBenchmarkTests {
    /// The useful work of a prefill: block matmuls, causal attention and the last logits.
    @Test func prefillFlopsCountsMatmulsAttentionAndLogits() {
        let d = ModelDimensions(layers: 30, embedding: 576, heads: 9, kvHeads: 3, headDim: 64, vocabularySize: 49152,
                                contextLength: 8192, blockMatrixParameters: 106_168_320)
        let matmul: Double = 2 * 106_168_320
        let attention: Double = 30 * 9 * 4 * 64
        let logits: Double = 2 * 576 * 49152
        #expect(ModelBenchmark.prefillFlops(d, tokens: 1) == matmul + attention + logits)
        // Causal attention over n tokens sees n(n+1)/2 query-key pairs.
        #expect(ModelBenchmark.prefillFlops(d, tokens: 4) == 4 * matmul + 10 * attention + logits)
    }
}
