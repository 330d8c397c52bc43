import Foundation
import Testing
import KVTCCache
import KVTCEmbeddedModel
import KVTCLlamaState
import KVTCRuntime
import KVTCStore

/// A conversation llama.cpp saved, into a store and back out as a state file.
@Suite struct LlamaStateTransferTests {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("KVTCLlamaStateTests/Fixtures/f16-vtrans.ggsq")

    @Test func aSavedConversationIsStoredAndWrittenBackBitExactly() async throws {
        let model = try EmbeddedModel.get()
        let bytes = Array(try Data(contentsOf: Self.fixture))
        let state = try LlamaSequenceState(bytes: bytes)
        // Exact f32 chunks of 8 tokens, 4 recent tokens in the tail.
        let store = try StoreFactory.exactStore(model: model, tiers: [MemoryTier(budget: 1 << 26)], precision: .fp32,
                                                configuration: StoreConfiguration(chunkTokens: 8, recentTokens: 4, tailPrecision: .fp32))
        let alice = StoreNamespace(tenant: "alice")
        let receipt = try await LlamaStateTransfer.importState(state, model: model, store: store, namespace: alice)
        #expect(receipt.storedTokens == 13 && receipt.chunksWritten == 1)
        let tokens = state.tokens.map(Int.init)
        let restored = try #require(await store.restore(tokens: tokens, namespace: alice))
        #expect(restored.matchedTokens == 13)
        #expect(restored.cache.keys == (try state.cache(geometry: model.geometry, rope: model.rope)).keys)
        #expect(await store.restore(tokens: tokens) == nil, "stored for alice only")
        // Exported as llama.cpp wrote it: one stream, sequence 0, F16, V transposed.
        let exported = try await LlamaStateTransfer.exportState(tokens: tokens, store: store, namespace: alice)
        #expect(exported.encoded() == bytes)
        await #expect(throws: LlamaStateTransferError.self) {
            _ = try await LlamaStateTransfer.exportState(tokens: [5, 6, 7], store: store, namespace: alice)
        }
    }
}
