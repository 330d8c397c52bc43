import Foundation
import KVTCCache
import KVTCEmbeddedModel
import KVTCLlamaState
import KVTCModels
import KVTCRuntime
import KVTCStore
import KVTCTokenizers
import Testing
@testable import KVTCLlamaServer

/// kvtc in front of real llama-server processes on loopback (built by
/// `scripts/llama-server.sh`; a missing binary fails these tests), over the embedded model's
/// GGUF, with an exact f32 store so that a restored slot holds exactly the F16 rows
/// llama-server saved.
@Suite(.serialized) struct LlamaServerEngineTests {
    static let essay = """
    The history of the printing press begins long before Gutenberg. Woodblock printing spread across \
    East Asia for centuries, and movable type made of ceramic and later metal appeared in China and Korea. \
    In Europe, the combination of an oil-based ink, a screw press adapted from wine making, and a hand mould \
    for casting uniform metal type made printing fast enough to change how knowledge travelled. Within fifty \
    years presses were running in more than two hundred cities, and the number of books in circulation grew \
    from thousands to millions. Scholars could compare identical copies, errors could be corrected in later \
    editions, and vernacular languages gained a standard written form. The consequences reached religion, \
    science and politics alike, and historians still argue about which mattered most.
    """

    static func exactStore(_ model: any LanguageModel) throws -> CacheStore {
        try CacheStore(identity: ProducerIdentity(modelHash: model.identity, profileHash: "", codecFormatVersion: 1, codec: "exact f32"),
                       codec: ExactCompressor(precision: .fp32), tier: MemoryTier(budget: 1 << 30),
                       configuration: StoreConfiguration(chunkTokens: 64, recentTokens: 16),
                       shape: CacheShape(geometry: model.geometry, rope: model.rope, layerAttention: model.layerAttention))
    }

    static func backend(_ server: LlamaServerProcess) -> LlamaServerBackend {
        LlamaServerBackend(url: server.url, slotDirectory: server.slotDirectory)
    }

    static func ask(_ engine: LlamaServerEngine, _ messages: [ChatMessage], tenant: String = "alice",
                    restore: Bool = true, maxTokens: Int = 12) async throws -> ([Int], GenerationOutcome) {
        let tokens = try await engine.promptTokens(chat: messages)
        let outcome = try await engine.complete(GenerationRequest(promptTokens: tokens, maxTokens: maxTokens, restore: restore,
                                                                  namespace: StoreNamespace(tenant: tenant)))
        await engine.flush()
        return (tokens, outcome)
    }

    static let firstTurn = [ChatMessage(role: .user, content: essay + "\n\nSummarise this in one sentence.")]
    static func secondTurn(_ reply: String) -> [ChatMessage] {
        firstTurn + [ChatMessage(role: .assistant, content: reply), ChatMessage(role: .user, content: "Name one consequence it mentions.")]
    }

    /// The probe learns the server's slot file layout: current llama-server writes the
    /// `server_tokens` token block.
    @Test func connectingLearnsTheSlotLayout() async throws {
        let model = try EmbeddedModel.get()
        let server = try LlamaServerProcess(model: model.path, slots: 2, slotContext: 2048)
        let engine = try await LlamaServerEngine.connect(backends: [Self.backend(server)], model: model, store: nil)
        let layout = try #require(engine.slotLayouts[0])
        #expect(layout.serverTokens && layout.keyType == .f16 && layout.valueType == .f16)
        #expect(engine.card.contextLength == 2048)
    }

    /// llama-server killed between turns and restarted: the next turn is restored from kvtc's
    /// store into a slot and llama-server reports the restored tokens as cached. The slot then
    /// holds, for the restored tokens, exactly the K/V bytes llama-server saved after the
    /// first turn (the exact store gives back the F16 rows it was given).
    @Test func aTurnAfterARestartIsRestoredFromTheStore() async throws {
        let model = try EmbeddedModel.get()
        let server = try LlamaServerProcess(model: model.path, slots: 1, slotContext: 2048)
        let engine = try await LlamaServerEngine.connect(backends: [Self.backend(server)], model: model, store: try Self.exactStore(model))
        let (_, first) = try await Self.ask(engine, Self.firstTurn)
        #expect(engine.counters.upstreamSaves == 1)
        _ = try await engine.apis[0].slotAction(0, .save, filename: "first.bin")
        server.kill()
        try server.start()
        let (second, restored) = try await Self.ask(engine, Self.secondTurn(first.text))
        #expect(engine.counters.upstreamRestores == 1)
        #expect(restored.cachedTokens >= 64, "llama-server reused \(restored.cachedTokens) of \(second.count) tokens")
        #expect(restored.prefilledTokens == second.count - restored.cachedTokens)
        #expect(!restored.tokens.isEmpty)
        _ = try await engine.apis[0].slotAction(0, .save, filename: "second.bin")
        let before = try LlamaSequenceState(bytes: Array(Data(contentsOf: server.slotDirectory.appendingPathComponent("first.bin"))))
        let after = try LlamaSequenceState(bytes: Array(Data(contentsOf: server.slotDirectory.appendingPathComponent("second.bin"))))
        let cells = Array(0..<restored.cachedTokens)
        #expect(try after.bytes(ofCells: cells) == before.bytes(ofCells: cells))
    }

    /// Two backends: a returning conversation goes to the backend whose slot still holds it,
    /// with no restore; another conversation takes the other backend's free slot.
    @Test func routingPrefersTheSlotThatHoldsThePrefix() async throws {
        let model = try EmbeddedModel.get()
        let servers = try (0..<2).map { _ in try LlamaServerProcess(model: model.path, slots: 1, slotContext: 2048) }
        let engine = try await LlamaServerEngine.connect(backends: servers.map(Self.backend), model: model, store: try Self.exactStore(model))
        let (_, a1) = try await Self.ask(engine, Self.firstTurn)
        let other = [ChatMessage(role: .user, content: "Write a haiku about the sea.")]
        _ = try await Self.ask(engine, other)
        let (a2tokens, a2) = try await Self.ask(engine, Self.secondTurn(a1.text))
        #expect(engine.counters.upstreamRestores == 0)
        #expect(a2.cachedTokens >= a2tokens.count / 2, "llama-server reused \(a2.cachedTokens) of \(a2tokens.count)")
    }

    /// The backend holding a conversation is killed between turns: the next turn, routed to
    /// it, fails before any reply and is served by the other backend with the prefix
    /// restored from the store; the client sees no failure.
    @Test func aDeadBackendsConversationMovesToAnother() async throws {
        let model = try EmbeddedModel.get()
        let servers = try (0..<2).map { _ in try LlamaServerProcess(model: model.path, slots: 1, slotContext: 2048) }
        let engine = try await LlamaServerEngine.connect(backends: servers.map(Self.backend), model: model, store: try Self.exactStore(model))
        let (_, first) = try await Self.ask(engine, Self.firstTurn)
        var holder: Int?
        for (i, api) in engine.apis.enumerated() where (try await api.slots().first?.promptTokens ?? 0) > 0 { holder = i }
        let dead = try #require(holder)
        servers[dead].kill()
        let (_, second) = try await Self.ask(engine, Self.secondTurn(first.text))
        #expect(engine.counters.upstreamRestores == 1, "\(engine.counters)")
        #expect(second.cachedTokens >= 64 && !second.tokens.isEmpty)
        // Pinned to the dead backend by its tokens (rendering found it down first): the
        // generation itself fails over.
        let tokens = try await engine.promptTokens(chat: Self.secondTurn(first.text) + [ChatMessage(role: .user, content: "Thanks.")])
        try servers[dead].start()
        _ = try await engine.promptTokens(text: "wake")  // both up again
        servers[1 - dead].kill()
        let third = try await engine.complete(GenerationRequest(promptTokens: tokens, maxTokens: 4, namespace: StoreNamespace(tenant: "alice")))
        #expect(!third.tokens.isEmpty && engine.counters.upstreamFailures >= 1, "\(engine.counters)")
    }

    /// A tenant never reuses another tenant's slot: the same prompt from bob is recomputed
    /// (the slot holding alice's conversation is erased first), and alice's next turn is
    /// restored from her own entries.
    @Test func tenantsDoNotShareSlotsOrEntries() async throws {
        let model = try EmbeddedModel.get()
        let server = try LlamaServerProcess(model: model.path, slots: 1, slotContext: 2048)
        let engine = try await LlamaServerEngine.connect(backends: [Self.backend(server)], model: model, store: try Self.exactStore(model))
        let (_, alice) = try await Self.ask(engine, Self.firstTurn, tenant: "alice")
        let (_, bob) = try await Self.ask(engine, Self.firstTurn, tenant: "bob")
        #expect(bob.cachedTokens == 0)
        #expect(engine.counters.upstreamRestores == 0)
        let (_, again) = try await Self.ask(engine, Self.secondTurn(alice.text), tenant: "alice")
        #expect(engine.counters.upstreamRestores == 1)
        #expect(again.cachedTokens >= 64)
    }

    /// llama-server restores a state kvtc writes in either token layout (plain list or
    /// `server_tokens`) and reports every token restored.
    @Test func bothTokenLayoutsRestore() async throws {
        let model = try EmbeddedModel.get()
        let server = try LlamaServerProcess(model: model.path, slots: 1, slotContext: 2048)
        let engine = try await LlamaServerEngine.connect(backends: [Self.backend(server)], model: model, store: nil)
        let layout = try #require(engine.slotLayouts[0])
        let tokens = model.tokenizer.encode(Self.essay, addBOS: true)
        var cache = model.makeCache(reservingCapacity: tokens.count)
        _ = try model.prefill(tokens: tokens, cache: &cache, logits: .none)
        for serverTokens in [false, true] {
            var l = layout
            l.serverTokens = serverTokens
            let state = try l.state(tokens: tokens.map { Int32($0) }, cache: cache)
            try Data(state.encoded()).write(to: server.slotDirectory.appendingPathComponent("layout.bin"))
            let result = try await engine.apis[0].slotAction(0, .restore, filename: "layout.bin")
            #expect(result.restored == tokens.count, "server_tokens: \(serverTokens)")
            let reread = try LlamaSequenceState(bytes: state.encoded())
            #expect(try reread.slotTokens().tokens == tokens.map { Int32($0) })
        }
    }

    /// Gemma 3 keeps two caches (full-context layers for every token, sliding layers for the
    /// last 512): kvtc reads both from llama-server's slot file and writes both back. A
    /// conversation longer than the window comes back after a restart with every restored
    /// cell of the full-context cache bit for bit as llama-server saved it. (llama-server
    /// continues from a restored sliding-window slot, its own saves included, only with
    /// `--swa-full`; without it, it recomputes and kvtc counts the restore as unused.)
    @Test func gemma3sTwoCachesAreRestored() async throws {
        let model = try Gemma3TestModel.get()
        let server = try LlamaServerProcess(model: model.path, slots: 1, slotContext: 2048, extra: ["--swa-full"])
        let engine = try await LlamaServerEngine.connect(backends: [Self.backend(server)], model: model, store: try Self.exactStore(model))
        #expect(engine.slotLayouts[0]?.windowed == true)
        let long = [ChatMessage(role: .user, content: Array(repeating: Self.essay, count: 5).joined(separator: "\n\n") + "\n\nWhat is this about?")]
        let (tokens, first) = try await Self.ask(engine, long)
        #expect(tokens.count > 600, "the prompt must outgrow the 512-token window (\(tokens.count) tokens)")
        #expect(engine.counters.upstreamSaves == 1)
        _ = try await engine.apis[0].slotAction(0, .save, filename: "first.bin")
        // llama-server's own file, read into a cache and written back in its layout: the same
        // bytes, both caches (the sliding one holds only its window's cells).
        let saved = Array(try Data(contentsOf: server.slotDirectory.appendingPathComponent("first.bin")))
        let state = try LlamaSequenceState(bytes: saved)
        let window = try #require(state.windowStreams?.first { !$0.cells.isEmpty })
        #expect(window.cells.count == 512 && state.streams.first { !$0.cells.isEmpty }!.cells.count > 512)
        let cache = try state.cache(geometry: model.geometry, rope: model.rope, layerAttention: model.layerAttention)
        let layout = try #require(engine.slotLayouts[0])
        #expect(try layout.state(tokens: state.slotTokens().tokens, cache: cache).encoded() == saved)
        server.kill()
        try server.start()
        let next = long + [ChatMessage(role: .assistant, content: first.text), ChatMessage(role: .user, content: "Say it in five words.")]
        let (_, restored) = try await Self.ask(engine, next)
        #expect(engine.counters.upstreamRestores == 1 && engine.counters.restoreFallbacks == 0, "\(engine.counters)")
        #expect(engine.counters.upstreamRestoresUnused == 0)
        #expect(restored.cachedTokens > 512)
        _ = try await engine.apis[0].slotAction(0, .save, filename: "second.bin")
        let before = try LlamaSequenceState(bytes: Array(Data(contentsOf: server.slotDirectory.appendingPathComponent("first.bin"))))
        let after = try LlamaSequenceState(bytes: Array(Data(contentsOf: server.slotDirectory.appendingPathComponent("second.bin"))))
        #expect(before.windowStreams != nil && after.windowStreams != nil)
        let cells = Array(0..<restored.cachedTokens)
        #expect(try after.bytes(ofCells: cells) == before.bytes(ofCells: cells))
        // A prompt that shares all but the end of the saved conversation: its stored chunks
        // lack the sliding layers' window rows (llama.cpp saved them at the end only), so
        // nothing is restored and llama-server recomputes.
        server.kill()
        try server.start()
        let edited = [ChatMessage(role: .user, content: Array(repeating: Self.essay, count: 5).joined(separator: "\n\n") + "\n\nWho invented it?")]
        let (_, fresh) = try await Self.ask(engine, edited)
        #expect(engine.counters.upstreamRestores == 1 && fresh.cachedTokens == 0)
    }

    /// llama-server killed while it streams a reply: the client's stream ends with an
    /// upstream error and nothing of the interrupted turn enters the store; once the server
    /// is back the next request is served.
    @Test func aBackendKilledMidReplyFailsCleanlyAndStoresNothing() async throws {
        let model = try EmbeddedModel.get()
        let server = try LlamaServerProcess(model: model.path, slots: 1, slotContext: 2048)
        let store = try Self.exactStore(model)
        let engine = try await LlamaServerEngine.connect(backends: [Self.backend(server)], model: model, store: store)
        let tokens = try await engine.promptTokens(chat: [ChatMessage(role: .user, content: "Count from one to five hundred.")])
        var pieces = 0
        var failure: (any Error)?
        do {
            for try await event in engine.generate(GenerationRequest(promptTokens: tokens, maxTokens: 1500)) {
                if case .piece = event {
                    pieces += 1
                    if pieces == 5 { server.kill() }
                }
            }
        } catch {
            failure = error
        }
        await engine.flush()
        #expect(pieces >= 5)
        guard case .upstream = failure as? EngineError else {
            Issue.record("the stream should end with an upstream error, ended with \(String(describing: failure))")
            return
        }
        #expect(store.counters.chunksWritten == 0 && store.counters.tailsWritten == 0)
        #expect(engine.counters.upstreamSaves == 0)
        try server.start()
        let (_, after) = try await Self.ask(engine, [ChatMessage(role: .user, content: "Say hello.")])
        #expect(!after.tokens.isEmpty)
    }

    /// kvtc refuses to front a llama-server that runs another model.
    @Test func aServerRunningAnotherModelIsRefused() async throws {
        let model = try EmbeddedModel.get()
        let gemma = try Gemma3TestModel.get()
        let server = try LlamaServerProcess(model: gemma.path, slots: 1, slotContext: 1024)
        await #expect(throws: LlamaServerEngineError.self) {
            _ = try await LlamaServerEngine.connect(backends: [Self.backend(server)], model: model, store: nil)
        }
    }

    /// A slot file damaged between save and import, or one holding tokens kvtc did not send,
    /// is refused by the checks and never stored.
    @Test func aDamagedSlotFileIsRefused() async throws {
        let model = try EmbeddedModel.get()
        let server = try LlamaServerProcess(model: model.path, slots: 1, slotContext: 2048)
        let store = try Self.exactStore(model)
        let engine = try await LlamaServerEngine.connect(backends: [Self.backend(server)], model: model, store: store)
        let (tokens, first) = try await Self.ask(engine, Self.firstTurn)
        _ = try await engine.apis[0].slotAction(0, .save, filename: "saved.bin")
        let bytes = Array(try Data(contentsOf: server.slotDirectory.appendingPathComponent("saved.bin")))
        let expected = tokens + first.tokens
        _ = try engine.importSlotFile(bytes, backend: 0, expected: expected)
        #expect(throws: LlamaServerEngineError.self) { _ = try engine.importSlotFile(Array(bytes.prefix(bytes.count - 100)), backend: 0, expected: expected) }
        #expect(throws: LlamaServerEngineError.self) { _ = try engine.importSlotFile(bytes, backend: 0, expected: [7] + expected.dropFirst()) }
        var garbled = bytes
        for i in stride(from: bytes.count - 4096, to: bytes.count, by: 2) { garbled[i] = 0xFF; garbled[i + 1] = 0x7F }  // F16 NaNs
        #expect(throws: LlamaServerEngineError.self) { _ = try engine.importSlotFile(garbled, backend: 0, expected: expected) }
        var foreign = bytes
        foreign[12] ^= 0x01  // the -1 marker of the token block, now a token id
        #expect(throws: LlamaServerEngineError.self) { _ = try engine.importSlotFile(foreign, backend: 0, expected: expected) }
    }
}
