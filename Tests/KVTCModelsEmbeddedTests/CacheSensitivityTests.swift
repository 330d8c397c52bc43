import Foundation
import KVTCCache
import KVTCEmbeddedModel
import KVTCTestSupport
import Testing
@testable import KVTCModels

@Suite(.serialized) struct CacheSensitivityTests {
    /// Queries depend only on tokens and positions, so their moments do not depend on how a
    /// sequence is split into forward passes; a pass with an observer also leaves the cache as
    /// one without. On the f32 reference path, where only summation order differs (a bfloat16
    /// pass rounds activations, and an observed pass keeps attention in f32).
    @Test func queryMomentsDoNotDependOnChunking() async throws {
        try await onOwnThread {
            let m = try EmbeddedModel.reference()
            let d = m.dimensions
            let tokens = [1] + m.tokenizer.encode("The quick brown fox jumps over the lazy dog. " + String(repeating: "Pack my box with five dozen liquor jugs. ", count: 4))
            let whole = AttentionObserver(tokens: 0, queryLayers: d.layers, queryWidth: d.heads * d.headDim)
            var a = m.makeCache()
            _ = try m.hiddenStates(tokens: tokens, cache: &a, startPosition: nil, rows: .none, observer: whole)
            let split = AttentionObserver(tokens: 0, queryLayers: d.layers, queryWidth: d.heads * d.headDim)
            var b = m.makeCache()
            let half = tokens.count / 2
            _ = try m.hiddenStates(tokens: Array(tokens[..<half]), cache: &b, startPosition: nil, rows: .none, observer: split)
            _ = try m.hiddenStates(tokens: Array(tokens[half...]), cache: &b, startPosition: nil, rows: .none, observer: split)
            var c = m.makeCache()
            _ = try m.prefill(tokens: tokens, cache: &c, logits: .none)
            // The same cache (to float32 summation order: OpenBLAS's thread count, which forward
            // passes of other suites switch, decides it).
            #expect(relativeDifference(a.keys, c.keys) < 1e-5 && relativeDifference(a.values, c.values) < 1e-5)
            let x = whole.queryMeanSquares, y = split.queryMeanSquares
            #expect(x.count == d.layers && x[0].count == d.heads * d.headDim)
            for l in 0..<d.layers {
                for i in x[l].indices { #expect(abs(x[l][i] - y[l][i]) <= 1e-4 * max(x[l][i], 1e-6)) }
            }
        }
    }

    /// Keys: one weight per RoPE pair (interleaved in SmolLM2), summed over the query heads of
    /// each kv head; values: the output projection's column energy, summed likewise.
    @Test func sensitivityFollowsRoPEPairsAndQueryGroups() async throws {
        try await onOwnThread {
            let m = try EmbeddedModel.get()
            let d = m.dimensions
            let observer = AttentionObserver(tokens: 0, queryLayers: d.layers, queryWidth: d.heads * d.headDim)
            var cache = m.makeCache()
            let tokens = [1] + m.tokenizer.encode(String(repeating: "Sensitivity is measured on real queries. ", count: 8))
            _ = try m.hiddenStates(tokens: tokens, cache: &cache, startPosition: nil, rows: .none, observer: observer)
            let q = observer.queryMeanSquares
            let s = m.cacheSensitivity(queryMeanSquares: q)
            let f = m.geometry.featuresPerLayer, hd = d.headDim, group = d.heads / d.kvHeads
            let energy = m.attentionOutputEnergy
            #expect(s.keys.count == m.geometry.featuresPerToken && s.values.count == s.keys.count)
            #expect(s.keys.allSatisfy { $0 > 0 && $0.isFinite } && s.values.allSatisfy { $0 > 0 && $0.isFinite })
            for l in [0, 14, 29] {
                for h in 0..<d.kvHeads {
                    for i in stride(from: 0, to: hd, by: 2) {
                        let k = s.keys[l * f + h * hd + i]
                        #expect(k == s.keys[l * f + h * hd + i + 1])
                        var expected = 0.0
                        for g in (h * group)..<((h + 1) * group) { expected += (q[l][g * hd + i] + q[l][g * hd + i + 1]) / 2 }
                        #expect(abs(Double(k) - expected) <= 1e-4 * expected)
                        let v = (h * group..<((h + 1) * group)).reduce(Float(0)) { $0 + energy[l][$1 * hd + i] }
                        #expect(abs(s.values[l * f + h * hd + i] - v) <= 1e-5 * v)
                    }
                }
            }
            // Weights differ across features (otherwise they could not change a profile).
            let layer0 = Array(s.keys[0..<f])
            #expect(layer0.max()! > 2 * layer0.min()!)
        }
    }
}
