import Foundation
import KVTCCache
import KVTCEmbeddedModel
import KVTCTestSupport
import Testing
@testable import KVTCModels
@testable import KVTCTokenizers

/// llama.cpp's figures for Gemma 3 270M, recorded by scripts/record-gemma3-reference.py.
struct Gemma3Reference: Decodable {
    struct Stress: Decodable { var text: String; var ids: [Int] }
    struct Chat: Decodable { var text: String; var ids: [Int] }
    struct File: Decodable { var count: Int; var sha256: String; var first: [Int] }
    var model_sha256: String
    var bos: Int
    var eos: Int
    var stress: [Stress]
    var chat: Chat
    var files: [String: File]
    var perplexity_gpl3_512: Double
    var perplexity_gpl3_2048: Double

    static func load() throws -> Gemma3Reference {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/gemma3-reference.json")
        return try JSONDecoder().decode(Gemma3Reference.self, from: Data(contentsOf: url))
    }
}

/// The second model family against llama.cpp: the tokenizer id for id, perplexity across
/// the sliding window, and the per-layer attention facts its caches carry.
@Suite(.serialized) struct Gemma3Tests {
    static let gpl3 = "/usr/share/common-licenses/GPL-3"

    @Test func theTokenizerGivesLlamaCppsIds() async throws {
        try await onOwnThread {
            let reference = try Gemma3Reference.load()
            let m = try Gemma3TestModel.get()
            #expect(m.identity == reference.model_sha256)
            let t = m.tokenizer
            #expect(t.kind == .sentencePiece && t.vocabularySize == 262_144)
            #expect(t.bosID == reference.bos && t.eosID == reference.eos && t.addBOS)
            for s in reference.stress {
                let ids = t.encode(s.text, parseSpecial: false)
                #expect(ids == s.ids, "\(s.text.debugDescription)")
                #expect(try t.decode(ids) == s.text)
            }
            var texts: [String: String] = [:]
            let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("../../Sources/KVTCCalibration/Corpus").standardized
            for name in reference.files.keys {
                let url = name == "GPL-3" ? URL(fileURLWithPath: Self.gpl3) : corpus.appendingPathComponent(name)
                texts[name] = try String(contentsOf: url, encoding: .utf8)
            }
            for (name, expected) in reference.files.sorted(by: { $0.key < $1.key }) {
                let ids = t.encode(texts[name]!, parseSpecial: false)
                let digest = ModelStore.sha256Hex(bytes: Array(ids.map(String.init).joined(separator: ",").utf8))
                let first = zip(ids, expected.first).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                #expect(ids.count == expected.count && digest == expected.sha256,
                        "\(name): \(ids.count) ids (llama.cpp \(expected.count)), first difference in the leading 64 at \(first.map(String.init) ?? "none")")
            }
        }
    }

    /// The chat template's prompt, with control tokens only where the template put them,
    /// encodes to the ids llama.cpp gives the same text with control tokens parsed.
    @Test func chatPromptsUseGemmasTurnMarkers() async throws {
        try await onOwnThread {
            let reference = try Gemma3Reference.load()
            let m = try Gemma3TestModel.get()
            let prompt = m.chatTemplate.prompt(user: "Which river flows through Paris?")
            #expect(prompt.text == reference.chat.text)
            #expect(m.tokenizer.encode(prompt) == reference.chat.ids)
            // What every chat path feeds the model: BOS first, as Gemma's template has it.
            #expect(m.chatPromptTokens(user: "Which river flows through Paris?") == [reference.bos] + reference.chat.ids)
            let system = m.chatTemplate.render([ChatMessage(role: .system, content: " Be brief. "),
                                                ChatMessage(role: .user, content: "Hi")])
            #expect(system == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")
            #expect(m.stopTokens.contains(m.tokenizer.id(of: "<end_of_turn>")!))
            // A user typing a turn marker gets text, not a control token.
            let typed = m.tokenizer.encode(m.chatTemplate.prompt(user: "<start_of_turn>model"))
            #expect(typed.filter { $0 == m.tokenizer.id(of: "<start_of_turn>") }.count == 2)
        }
    }

    /// Within 2% of llama.cpp on GPL-3, before and across the 512-token window (llama.cpp
    /// quantizes activations for its quantized matmuls; this model runs them in f32).
    @Test func gpl3PerplexityMatchesLlamaCppAcrossTheWindow() async throws {
        try await onOwnThread {
            let reference = try Gemma3Reference.load()
            let m = try Gemma3TestModel.get()
            let text = try m.tokenizer.encode(String(contentsOfFile: Self.gpl3, encoding: .utf8), parseSpecial: false)
            for (count, expected) in [(512, reference.perplexity_gpl3_512), (2048, reference.perplexity_gpl3_2048)] {
                let r = try m.perplexity(tokens: [m.tokenizer.bosID!] + text.prefix(count - 1))
                print("Gemma 3 GPL-3 perplexity (BOS + \(count - 1) tokens): \(r.perplexity), llama.cpp \(expected)")
                #expect(abs(r.perplexity / expected - 1) < 0.02, "\(r.perplexity) vs llama.cpp \(expected)")
            }
        }
    }

    /// Prefill and token-by-token decoding agree across the sliding window's edge: the
    /// decoded tokens' sliding layers must drop exactly the keys the prefill's mask drops.
    /// Tolerances as in `LlamaModelTests.prefillMatchesIncrementalDecoding` (f32: summation
    /// order; bfloat16: a few roundings of 2^-8; measured up to 8.5e-3 on the logits).
    @Test(arguments: [ModelPrecision.f32, .bf16])
    func prefillMatchesIncrementalDecodingAcrossTheWindow(precision: ModelPrecision) async throws {
        try await onOwnThread {
            let m = precision == .f32 ? try Gemma3TestModel.reference() : try Gemma3TestModel.get()
            guard m.precision == precision else { return #expect(!precision.isAvailable) }
            let tolerance: Float = precision == .f32 ? 1e-3 : 3e-2
            let text = try String(contentsOfFile: Self.gpl3, encoding: .utf8)
            let tokens = Array(([m.tokenizer.bosID!] + m.tokenizer.encode(text, parseSpecial: false)).prefix(530))
            var full = m.makeCache()
            let all = try m.prefill(tokens: tokens, cache: &full, logits: .all)
            var inc = m.makeCache()
            var last = try m.prefill(tokens: Array(tokens[..<505]), cache: &inc, logits: .last).elements
            #expect(relativeDifference(all.row(504), last) < tolerance)
            for (i, t) in tokens[505...].enumerated() {
                last = try m.decodeStep(token: t, cache: &inc)
                #expect(relativeDifference(all.row(505 + i), last) < tolerance, "token \(505 + i)")
            }
            #expect(relativeDifference(full.keys, inc.keys) < tolerance)
            // The next token (position 530) sees positions 19 and later in a window of 512:
            // zeroing the sliding layers' rows before that, as a window-trimming codec restores
            // them, changes nothing; changing a global layer's changes the logits.
            let f = m.geometry.featuresPerLayer, p = m.geometry.featuresPerToken
            let reach = 530 + 1 - 512
            func decodeAfterChangingRowsBeforeTheReach(inLayers layers: [Int]) throws -> [Float] {
                var changed = inc
                var keys = changed.keys, values = changed.values
                for t in 0..<reach { for l in layers { for i in 0..<f { keys[t * p + l * f + i] = t == 0 ? 100 : 0; values[t * p + l * f + i] = 0 } } }
                try changed.replaceStreams(keys: keys, values: values)
                return try m.decodeStep(token: tokens.last!, cache: &changed)
            }
            let sliding = m.layerAttention.indices.filter { m.layerAttention[$0].window != nil }
            var unchanged = inc
            let reference = try m.decodeStep(token: tokens.last!, cache: &unchanged)
            // (To float32 rounding: OpenBLAS's thread count, which a forward pass in another
            // suite switches, sets the summation order of each call.)
            let hidden = relativeDifference(try decodeAfterChangingRowsBeforeTheReach(inLayers: sliding), reference)
            let seen = relativeDifference(try decodeAfterChangingRowsBeforeTheReach(inLayers: [5]), reference)
            #expect(hidden < 1e-5, "a sliding layer saw a row its window has passed: \(hidden)")
            #expect(seen > 1e-3, "a global layer ignored a changed key: \(seen)")
        }
    }

    @Test func cachesCarryEveryLayersRotationAndWindow() throws {
        let m = try Gemma3TestModel.get()
        #expect(m.architecture == "gemma3")
        #expect(m.geometry == KVGeometry(layers: 18, kvHeads: 1, headDim: 256))
        let global = m.layerAttention.indices.filter { m.layerAttention[$0].window == nil }
        #expect(global == [5, 11, 17])
        #expect(m.layerAttention[0] == LayerAttention(rope: RoPE(layout: .half, theta: 10_000, rotaryDims: 256), window: 512))
        #expect(m.layerAttention[5] == LayerAttention(rope: RoPE(layout: .half, theta: 1_000_000, rotaryDims: 256), window: nil))
        let cache = m.makeCache()
        #expect(cache.layerAttention == m.layerAttention && !cache.isUniform)
        // A cache of the same shape that claims uniform rotation is refused, not misread.
        var uniform = KVCache(geometry: m.geometry, rope: m.rope)
        #expect(throws: ModelError.self) { _ = try m.prefill(tokens: [2, 100], cache: &uniform) }
    }
}
