import KVTCCache
import KVTCGGUF
import KVTCLlamaState
import KVTCModels
import KVTCStore

/// Errors moving conversations between llama.cpp states and a store.
public enum LlamaStateTransferError: Error, CustomStringConvertible {
    case state(LlamaStateError)
    case store(StoreError)
    /// The state cannot be keyed: no token ids, or cells that are not positions `0..<n`.
    case notAConversation(String)
    /// Nothing of the tokens is stored.
    case notStored(Int)

    public var description: String {
        switch self {
        case .state(let e): return e.description
        case .store(let e): return e.description
        case .notAConversation(let m): return "the state is not a conversation kvtc can store: \(m)"
        case .notStored(let n): return "no stored prefix of the \(n) tokens"
        }
    }
}

/// Puts llama.cpp conversations into a store under their token prefix, and writes stored
/// prefixes back as llama.cpp state files.
public enum LlamaStateTransfer {
    /// Stores the conversation a state file holds (its token ids and their cache) in
    /// `namespace`; `kvtc serve` over the same store then restores it.
    public static func importState(_ state: LlamaSequenceState, model: any LanguageModel, store: CacheStore,
                                   namespace: StoreNamespace = .shared) async throws(LlamaStateTransferError) -> StoreReceipt {
        let tokens: [Int]
        do { tokens = state.tokens.isEmpty ? [] : try state.slotTokens().tokens.map(Int.init) } catch { throw .state(error) }
        guard !tokens.isEmpty else { throw .notAConversation("it carries no token ids (raw sequence data); save it with llama_state_seq_save_file") }
        let cache: KVCache
        do { cache = try state.cache(geometry: model.geometry, rope: model.rope, layerAttention: model.layerAttention, model: model.identity) } catch { throw .state(error) }
        guard cache.tokenCount == tokens.count, cache.positions == Array(0..<tokens.count) else {
            throw .notAConversation("\(tokens.count) token ids for \(cache.tokenCount) cells at positions other than 0..<\(tokens.count)")
        }
        if let bad = tokens.first(where: { $0 < 0 || $0 >= model.dimensions.vocabularySize }) {
            throw .notAConversation("token id \(bad) is outside the model's vocabulary")
        }
        do { return try await store.store(tokens: tokens, cache: cache, namespace: namespace) } catch { throw .store(error) }
    }

    /// The longest stored prefix of `tokens` as a llama.cpp state file in `layout` (by
    /// default one stream, F16 K/V, V transposed and a plain token list: what llama.cpp writes
    /// without flash attention).
    public static func exportState(tokens: [Int], store: CacheStore, namespace: StoreNamespace = .shared,
                                   layout: SlotStateLayout = SlotStateLayout()) async throws(LlamaStateTransferError) -> LlamaSequenceState {
        guard let restored = await store.restore(tokens: tokens, namespace: namespace) else { throw .notStored(tokens.count) }
        let cache = restored.cache
        do throws(LlamaStateError) {
            return try layout.state(tokens: tokens.prefix(cache.tokenCount).map { Int32($0) }, cache: cache)
        } catch { throw .state(error) }
    }
}
