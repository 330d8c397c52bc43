import Foundation
import KVTCTestSupport
import Testing
import KVTCCache
import KVTCEmbeddedModel
import KVTCLlamaState
import KVTCModels

/// kvtc's SmolLM2 against llama.cpp, an independent engine: the cache kvtc computes for the
/// tokens of the recorded fixtures equals the one llama.cpp saved (F32 K/V), up to the
/// float reassociation of two different GEMM and attention implementations.
@Suite struct LlamaCppAgreementTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("KVTCLlamaStateTests/Fixtures")

    @Test func theModelsCacheMatchesTheOneLlamaCppSaved() async throws {
        try await onOwnThread {
            let model = try EmbeddedModel.get()
            let state = try LlamaSequenceState(bytes: Array(try Data(contentsOf: Self.fixtures.appendingPathComponent("f32.ggsq"))))
            let theirs = try state.cache(geometry: model.geometry, rope: model.rope)
            var ours = model.makeCache(reservingCapacity: theirs.tokenCount)
            _ = try model.prefill(tokens: state.tokens.map(Int.init), cache: &ours, logits: .none)
            #expect(ours.positions == theirs.positions)
            // Per layer, relative RMS difference: the keys carry RoPE, so a wrong pairing or base
            // would show as an error of order one. llama.cpp multiplies Q4_1 weights with
            // activations quantized to 8 bits, kvtc with f32 activations, so the two engines
            // differ: measured 1.5% relative RMS at layer 0, up to 6% at layer 29.
            let g = model.geometry, w = g.featuresPerLayer, p = g.featuresPerToken
            for l in 0..<g.layers {
                for (name, a, b) in [("keys", ours.keys, theirs.keys), ("values", ours.values, theirs.values)] {
                    var num: Float = 0, den: Float = 0
                    for t in 0..<ours.tokenCount {
                        for j in 0..<w {
                            let i = t * p + l * w + j
                            num += (a[i] - b[i]) * (a[i] - b[i])
                            den += b[i] * b[i]
                        }
                    }
                    #expect((num / den).squareRoot() < (l == 0 ? 3e-2 : 0.1), "layer \(l) \(name): \((num / den).squareRoot())")
                }
            }
        }
    }
}
