import KVTCEmbeddedModel
import KVTCModels
import KVTCNumerics
import KVTCRuntime
import KVTCStore
import Testing

/// The serving engine over the embedded model: the shared decode loop, cancellation, and
/// restoring a stored turn.
@Suite(.serialized) struct LocalEngineTests {
    func prompt(_ model: any LanguageModel, _ text: String) -> [Int] {
        model.tokenizer.encode(model.chatTemplate.prompt(user: text))
    }

    /// The engine's reply is the model's own greedy generation: one decode loop serves both.
    @Test func theEngineGeneratesWhatTheModelGenerates() async throws {
        let model = try EmbeddedModel.get()
        let tokens = prompt(model, "What is the capital of France?")
        var cache = model.makeCache()
        let direct = try model.generate(promptTokens: tokens, cache: &cache, maxTokens: 12)
        let engine = LocalEngine(model: model, store: nil)
        let o = try await engine.generate(GenerationRequest(promptTokens: tokens, maxTokens: 12))
        #expect(o.tokens == direct.tokens && o.text == direct.text && o.stopReason == direct.stopReason)
        #expect(o.promptTokens == tokens.count && o.cachedTokens == 0 && o.prefilledTokens == tokens.count)
        #expect(o.timeToFirstTokenSeconds >= o.prefillSeconds)
    }

    /// A token callback that returns false (a client that went away) stops generation at once.
    @Test func aCallbackThatDeclinesStopsGeneration() async throws {
        let model = try EmbeddedModel.get()
        let engine = LocalEngine(model: model, store: nil)
        let seen = Locked(0)
        let o = try await engine.generate(GenerationRequest(promptTokens: prompt(model, "Count from one to fifty."), maxTokens: 40)) { _, _ in
            seen.withLock { n in n += 1; return n < 3 }
        }
        #expect(o.stopReason == .cancelled)
        #expect(o.tokens.count == 3 && seen.current == 3)
    }

    /// The second turn restores the first turn's cache from the store and answers exactly as
    /// recomputing would (an exact f32 store restores bit-identical rows).
    @Test func theNextTurnIsRestoredAndAnswersAsRecomputed() async throws {
        let model = try EmbeddedModel.get()
        let store = try CacheStore(identity: ProducerIdentity(modelHash: model.identity, profileHash: "", codecFormatVersion: 1,
                                                              codec: "exact f32"),
                                   codec: ExactCompressor(precision: .fp32), tier: MemoryTier(budget: 1 << 30),
                                   configuration: StoreConfiguration(chunkTokens: 32, recentTokens: 16))
        let engine = LocalEngine(model: model, store: store)
        let first = prompt(model, "Name three colours.")
        let a = try await engine.generate(GenerationRequest(promptTokens: first, maxTokens: 8))
        #expect(a.chunksWritten > 0)
        let second = first + a.tokens + model.tokenizer.encode("<|im_end|>\n<|im_start|>user\nAnd three animals?<|im_end|>\n<|im_start|>assistant\n")
        let restored = try await engine.generate(GenerationRequest(promptTokens: second, maxTokens: 8))
        let recomputed = try await LocalEngine(model: model, store: nil).generate(GenerationRequest(promptTokens: second, maxTokens: 8))
        #expect(restored.cachedTokens >= 32)
        #expect(restored.prefilledTokens == second.count - restored.cachedTokens)
        #expect(restored.tokens == recomputed.tokens)
    }
}
