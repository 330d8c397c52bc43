import AsyncHTTPClient
import Foundation
import KVTCCache
import KVTCLlamaState
import KVTCModels
import KVTCNumerics
import KVTCRuntime
import KVTCStore
import KVTCTokenizers

/// One llama-server process kvtc fronts: its URL and the directory it was started with as
/// `--slot-save-path` (kvtc writes restores there and reads saves from there).
public struct LlamaServerBackend: Sendable, Equatable {
    public var url: String
    public var slotDirectory: URL

    public init(url: String, slotDirectory: URL) {
        self.url = url
        self.slotDirectory = slotDirectory
    }
}

/// Why kvtc will not front a llama-server.
public enum LlamaServerEngineError: Error, CustomStringConvertible {
    case backend(LlamaServerError)
    /// The server runs another model than the GGUF kvtc was given.
    case foreignModel(String)
    /// A slot file could not be read, written or matched.
    case slotFile(String)

    public var description: String {
        switch self {
        case .backend(let e): return e.description
        case .foreignModel(let m): return "the llama-server runs another model: \(m)"
        case .slotFile(let m): return "slot file: \(m)"
        }
    }
}

/// An engine in front of one or more llama-server processes: llama-server renders,
/// tokenizes and generates; kvtc keeps every conversation's cache compressed in its store,
/// restores it into a slot when no slot holds it (after a restart, on another backend, or
/// once llama-server has moved on), and stores each slot's new cache after a reply.
///
/// What llama-server does not check, kvtc does: the model behind every backend matches the
/// GGUF kvtc was given (metadata, and the keys of a probe prompt against kvtc's own forward
/// pass), every slot file it stores has the backend's layout, the tokens kvtc sent and cells
/// at positions `0..<n`, and a restore llama-server refuses or cuts short means recomputing.
public final class LlamaServerEngine: Engine {
    public let card: ModelCard
    public let store: CacheStore?
    /// The model kvtc reads geometry, RoPE and the probe from (the GGUF llama-server runs).
    public let model: any LanguageModel
    let backends: [LlamaServerBackend]
    let apis: [LlamaServerAPI]
    let upstream: [UpstreamModel]
    let layouts: Locked<[SlotStateLayout?]>
    let book: SlotBook
    let tally = Locked(EngineCounters())
    private let observer: (@Sendable (GenerationOutcome) -> Void)?
    /// Slot saves still running (awaited by ``flush()``).
    private let pending = Locked(0)
    /// Probes of two backends may run at once; the model's forward pass runs one at a time.
    private let modelLock = Locked(())

    public var counters: EngineCounters { tally.current }

    /// The layout of each backend's slot files (known once probed).
    public var slotLayouts: [SlotStateLayout?] { layouts.current }

    /// Connects to every backend, checks that each runs `model`'s GGUF and learns how it
    /// writes slot files (a probe prompt in slot 0, saved and compared with kvtc's own cache
    /// of it, then erased).
    public static func connect(backends: [LlamaServerBackend], model: any LanguageModel, store: CacheStore?,
                               name: String? = nil, client: HTTPClient = .shared,
                               observer: (@Sendable (GenerationOutcome) -> Void)? = nil) async throws(LlamaServerEngineError) -> LlamaServerEngine {
        precondition(!backends.isEmpty, "at least one backend")
        let apis = backends.map { LlamaServerAPI(url: $0.url, client: client) }
        var upstream: [UpstreamModel] = []
        for api in apis {
            let m: UpstreamModel
            do { m = try await api.model() } catch { throw .backend(error) }
            try ModelFingerprint(model: model).check(m, url: api.url)
            upstream.append(m)
        }
        let engine = LlamaServerEngine(model: model, store: store, backends: backends, apis: apis, upstream: upstream,
                                       name: name, observer: observer)
        for b in backends.indices { try await engine.probe(b) }
        return engine
    }

    init(model: any LanguageModel, store: CacheStore?, backends: [LlamaServerBackend], apis: [LlamaServerAPI],
         upstream: [UpstreamModel], name: String?, observer: (@Sendable (GenerationOutcome) -> Void)?) {
        self.model = model
        self.store = store
        self.backends = backends
        self.apis = apis
        self.upstream = upstream
        self.observer = observer
        self.layouts = Locked(Array(repeating: nil, count: backends.count))
        self.book = SlotBook(slotsPerBackend: upstream.map(\.slots))
        let context = upstream.map(\.slotContext).min() ?? model.dimensions.contextLength
        self.card = ModelCard(name: name ?? URL(fileURLWithPath: model.path).lastPathComponent, identity: model.identity,
                              contextLength: context, vocabularySize: model.dimensions.vocabularySize)
    }

    // MARK: Rendering and tokenizing: llama-server's own

    public func promptTokens(chat messages: [ChatMessage]) async throws(EngineError) -> [Int] {
        let rendered = messages.map { ["role": $0.role.rawValue, "content": $0.content] }
        return try await onSomeBackend { api throws(LlamaServerError) in try await api.tokenize(try await api.applyTemplate(rendered)) }
    }

    public func promptTokens(text: String) async throws(EngineError) -> [Int] {
        try await onSomeBackend { api throws(LlamaServerError) in try await api.tokenize(text) }
    }

    /// Runs `call` on the first backend that answers (those marked down last); a backend
    /// that cannot be reached is marked down and the next one tried.
    func onSomeBackend<T>(_ call: (LlamaServerAPI) async throws(LlamaServerError) -> T) async throws(EngineError) -> T {
        var last: LlamaServerError?
        for b in await book.backendsByHealth() {
            do { return try await call(apis[b]) } catch {
                last = error
                guard error.isUnreachable else { throw .upstream(error.description) }
                await book.setDown(b, true)
            }
        }
        throw .upstream(last?.description ?? "no llama-server backend")
    }

    // MARK: Generation

    public func generate(_ request: GenerationRequest) -> AsyncThrowingStream<GenerationEvent, any Error> {
        Self.eventStream { continuation, consumerGone throws(EngineError) in
            let outcome = try await self.run(request, continuation: continuation, consumerGone: consumerGone)
            self.observer?(outcome)
            return outcome
        }
    }

    /// Waits for the stores of slot saves still running (tests, benchmarks, shutdown).
    public func flush() async {
        while pending.current > 0 { try? await Task.sleep(for: .milliseconds(5)) }
    }

    private func run(_ request: GenerationRequest, continuation: AsyncThrowingStream<GenerationEvent, any Error>.Continuation,
                     consumerGone: @escaping @Sendable () -> Bool) async throws(EngineError) -> GenerationOutcome {
        try validate(request)
        let clock = Date()
        let prompt = request.promptTokens
        // The longest stored prefix, leaving at least one token for llama-server to evaluate.
        let match = request.restore && prompt.count > 1
            ? await store?.lookup(tokens: Array(prompt.dropLast()), namespace: request.namespace) : nil
        // llama.cpp saves a sliding layer's rows for its window only, at the end of the save:
        // for a model with sliding layers only a match through a tail (a whole saved
        // conversation) has them, and a shorter prefix would restore zeros into the window.
        let windowed = layouts.current.contains { $0?.windowed == true }
        let stored = match.map { windowed && $0.tailKey == nil ? 0 : $0.matchedTokens } ?? 0
        var avoiding: Set<Int> = []
        while true {
            guard let lease = await book.lease(prompt: prompt, namespace: request.namespace, avoiding: avoiding) else {
                throw .upstream("no llama-server backend is reachable")
            }
            do {
                return try await serve(request, lease: lease, stored: stored, clock: clock, continuation: continuation,
                                       consumerGone: consumerGone)
            } catch let failure as BackendFailure {
                // Nothing reached the client yet: try another backend (or the same one once
                // it is back) rather than fail the request.
                tally.withLock { $0.upstreamFailures += 1 }
                // (`serve` has given the lease back: releasing it again could free the slot
                // under a request that leased it since.)
                await book.setDown(lease.address.backend, true)
                layouts.withLock { $0[lease.address.backend] = nil }
                avoiding.insert(lease.address.backend)
                if avoiding.count >= backends.count { throw .upstream(failure.error.description) }
            } catch let error as EngineError {
                throw error
            } catch {
                throw .upstream(String(describing: error))
            }
        }
    }

    /// A backend failed before any text reached the client.
    struct BackendFailure: Error { var error: LlamaServerError }

    private func serve(_ request: GenerationRequest, lease: SlotLease, stored: Int, clock: Date,
                       continuation: AsyncThrowingStream<GenerationEvent, any Error>.Continuation,
                       consumerGone: @escaping @Sendable () -> Bool) async throws -> GenerationOutcome {
        let b = lease.address.backend, slot = lease.address.slot, api = apis[b]
        let prompt = request.promptTokens
        let book = self.book
        do {
            if layouts.current[b] == nil {
                do throws(LlamaServerEngineError) { try await probe(b) } catch {
                    if case .backend(let e) = error { throw BackendFailure(error: e) }
                    throw EngineError.upstream(error.description)
                }
            }
            // What the slot really holds: kvtc's record, if llama-server still reports it.
            var reusable = lease.reusable
            let slots: [UpstreamSlot]
            do { slots = try await api.slots() } catch { throw BackendFailure(error: error) }
            let reported = slots.first { $0.id == slot }
            if reported?.promptTokens != lease.contents.tokens.count || lease.contents.tokens.isEmpty {
                reusable = 0
            }
            // Restore the stored prefix when the slot does not hold as much of it.
            var restoredTokens = 0
            if stored > reusable, let store {
                restoredTokens = await restore(prompt: Array(prompt.prefix(stored)), namespace: request.namespace,
                                               store: store, backend: b, slot: slot)
                if restoredTokens == 0 { reusable = 0 }
            }
            if restoredTokens == 0 && reusable == 0 && (reported?.promptTokens ?? 0) > 0 {
                // The slot holds another namespace's conversation, or something kvtc cannot
                // vouch for: llama-server must not reuse any of it for this request.
                do { _ = try await api.slotAction(slot, .erase) } catch { throw BackendFailure(error: error) }
            }
            let restoreSeconds = Date().timeIntervalSince(clock)
            let parameters = CompletionParameters(
                prompt: prompt, nPredict: request.maxTokens, temperature: Double(request.sampling.temperature),
                topP: Double(request.sampling.topP), topK: request.sampling.topK > 0 ? request.sampling.topK : nil,
                seed: UInt32(truncatingIfNeeded: request.sampling.seed), idSlot: slot)
            let chunks: AsyncThrowingStream<CompletionChunk, any Error>
            do { chunks = try await api.completion(parameters) } catch { throw BackendFailure(error: error) }
            var text = "", generated: [Int] = [], firstToken: Double?, last: CompletionChunk?, cancelled = false
            var sent = false
            do {
                for try await chunk in chunks {
                    if let t = chunk.tokens { generated += t }
                    if let piece = chunk.content, !piece.isEmpty || !(chunk.tokens ?? []).isEmpty {
                        if firstToken == nil { firstToken = Date().timeIntervalSince(clock) }
                        text += piece
                        continuation.yield(.piece(piece))
                        sent = true
                    }
                    if chunk.stop == true { last = chunk; break }
                    if request.isCancelled() || consumerGone() { cancelled = true; break }
                }
            } catch let error as LlamaServerError {
                if !sent { throw BackendFailure(error: error) }
                throw EngineError.upstream(error.description)
            }
            if last == nil && !cancelled {
                let e = LlamaServerError.unreachable(api.url, "the stream ended without a final event")
                if !sent { throw BackendFailure(error: e) }
                throw EngineError.upstream(e.description)
            }
            let timings = last?.timings
            let cached = timings?.cacheN ?? 0
            if restoredTokens > 0 && cached < restoredTokens { tally.withLock { $0.upstreamRestoresUnused += 1 } }
            let stop: StopReason = cancelled ? .cancelled : last?.stopType == "eos" || last?.stopType == "word" ? .endOfSequence : .length
            let outcome = GenerationOutcome(
                tokens: generated, text: text, stopReason: stop, promptTokens: prompt.count, cachedTokens: cached,
                prefilledTokens: timings?.promptN ?? prompt.count - cached, restoreSeconds: restoreSeconds,
                prefillSeconds: (timings?.promptMs ?? 0) / 1000, timeToFirstTokenSeconds: firstToken ?? Date().timeIntervalSince(clock),
                decodeSeconds: (timings?.predictedMs ?? 0) / 1000, storeSeconds: 0, chunksWritten: 0)
            // Save the slot and store its new chunks off the request path; the slot stays
            // leased until then so nothing changes it in between.
            let expected = prompt + generated
            let pending = self.pending
            pending.withLock { $0 += 1 }
            Task {
                defer { pending.withLock { $0 -= 1 } }
                var holding: SlotContents?
                if !cancelled, request.store, let store {
                    holding = await self.saveSlot(backend: b, slot: slot, expected: expected, namespace: request.namespace, store: store)
                } else if !cancelled {
                    holding = SlotContents(tokens: expected, namespace: request.namespace)
                }
                await book.release(lease.address, holding: holding)
            }
            return outcome
        } catch {
            await book.release(lease.address, holding: nil)
            throw error
        }
    }

    // MARK: Restores and saves

    /// Restores the stored prefix of `prompt` into `slot`; the tokens restored, or 0 when the
    /// store has nothing or llama-server refused or cut the restore short (recompute).
    func restore(prompt: [Int], namespace: StoreNamespace, store: CacheStore, backend b: Int, slot: Int) async -> Int {
        guard let layout = layouts.current[b] else { return 0 }
        guard let restored = await store.restore(tokens: prompt, namespace: namespace) else { return 0 }
        // See `run`: a sliding-window model restores whole saved conversations only.
        if layout.windowed && !restored.usedTail { return 0 }
        let n = restored.matchedTokens
        let name = "kvtc-restore-\(UUID().uuidString).bin"
        let path = backends[b].slotDirectory.appendingPathComponent(name)
        defer { try? FileManager.default.removeItem(at: path) }
        do {
            try layout.write(tokens: prompt.prefix(n).map { Int32($0) }, cache: restored.cache, to: path)
            let result = try await apis[b].slotAction(slot, .restore, filename: name)
            guard result.restored == n else {
                tally.withLock { $0.restoreFallbacks += 1 }
                _ = try? await apis[b].slotAction(slot, .erase)
                return 0
            }
            tally.withLock { $0.upstreamRestores += 1 }
            return n
        } catch {
            tally.withLock { $0.restoreFallbacks += 1 }
            _ = try? await apis[b].slotAction(slot, .erase)
            return 0
        }
    }

    /// Saves `slot`, checks the file and stores its cache; what the slot then holds.
    func saveSlot(backend b: Int, slot: Int, expected: [Int], namespace: StoreNamespace, store: CacheStore) async -> SlotContents? {
        let name = "kvtc-save-\(UUID().uuidString).bin"
        let path = backends[b].slotDirectory.appendingPathComponent(name)
        defer { try? FileManager.default.removeItem(at: path) }
        let bytes: [UInt8]
        do {
            _ = try await apis[b].slotAction(slot, .save, filename: name)
            bytes = Array(try Data(contentsOf: path))
        } catch {
            return nil
        }
        let tokens: [Int], cache: KVCache
        do throws(LlamaServerEngineError) { (tokens, cache) = try importSlotFile(bytes, backend: b, expected: expected) } catch {
            tally.withLock { $0.upstreamSavesRefused += 1 }
            return nil
        }
        // The slot holds what the file says whether or not the store takes it.
        do { _ = try await store.store(tokens: tokens, cache: cache, namespace: namespace) } catch {
            tally.withLock { $0.upstreamSavesRefused += 1 }
            return SlotContents(tokens: tokens, namespace: namespace)
        }
        tally.withLock { $0.upstreamSaves += 1 }
        return SlotContents(tokens: tokens, namespace: namespace)
    }

    /// The tokens and cache of a slot file, after kvtc's checks: the backend's layout, cells
    /// at positions `0..<n`, the first `n` of the tokens kvtc sent, finite values.
    func importSlotFile(_ bytes: [UInt8], backend b: Int, expected: [Int]) throws(LlamaServerEngineError) -> ([Int], KVCache) {
        do throws(LlamaStateError) {
            let state = try LlamaSequenceState(bytes: bytes)
            guard let layout = layouts.current[b], try SlotStateLayout(of: state) == layout else {
                throw LlamaStateError.mismatch("the file's layout is not the backend's")
            }
            let words = try state.slotTokens().tokens.map(Int.init)
            let cache = try state.cache(geometry: model.geometry, rope: model.rope, layerAttention: model.layerAttention,
                                        model: model.identity)
            let n = cache.tokenCount
            guard n > 0, n <= words.count, cache.positions == Array(0..<n) else {
                throw LlamaStateError.mismatch("\(n) cells for \(words.count) tokens, or cells not at positions 0..<\(n)")
            }
            guard words.count <= expected.count, Array(expected.prefix(words.count)) == words else {
                throw LlamaStateError.mismatch("the slot holds tokens kvtc did not send it")
            }
            return (Array(words.prefix(n)), cache)
        } catch {
            throw .slotFile(error.description)
        }
    }

    /// Learns backend `b`'s slot layout and checks its model against kvtc's forward pass:
    /// the keys llama-server computed for a probe prompt must match kvtc's own within the
    /// error of an F16 cache computed by another engine from the same weights.
    func probe(_ b: Int) async throws(LlamaServerEngineError) {
        let api = apis[b]
        let probe = Array(model.tokenizer.encode("The quick brown fox jumps over the lazy dog.", addBOS: model.tokenizer.addBOS).prefix(16))
        let name = "kvtc-probe-\(UUID().uuidString).bin"
        let path = backends[b].slotDirectory.appendingPathComponent(name)
        defer { try? FileManager.default.removeItem(at: path) }
        let bytes: [UInt8]
        do {
            let parameters = CompletionParameters(prompt: probe, nPredict: 1, temperature: 0, topP: 1, seed: 0, idSlot: 0,
                                                  cachePrompt: true, stream: true, returnTokens: true)
            for try await _ in try await api.completion(parameters) {}
            _ = try await api.slotAction(0, .save, filename: name)
            do { bytes = Array(try Data(contentsOf: path)) } catch {
                throw LlamaServerEngineError.slotFile("cannot read \(path.path) (is it the server's --slot-save-path?): \(error)")
            }
            _ = try await api.slotAction(0, .erase)
        } catch let e as LlamaServerEngineError {
            throw e
        } catch let e as LlamaServerError {
            throw .backend(e)
        } catch {
            throw .backend(.unreachable(api.url, String(describing: error)))
        }
        let state: LlamaSequenceState, layout: SlotStateLayout, theirs: KVCache
        do throws(LlamaStateError) {
            state = try LlamaSequenceState(bytes: bytes)
            layout = try SlotStateLayout(of: state)
            theirs = try state.cache(geometry: model.geometry, rope: model.rope, layerAttention: model.layerAttention)
        } catch {
            throw .foreignModel("its slot file does not fit \(URL(fileURLWithPath: model.path).lastPathComponent): \(error)")
        }
        let n = min(theirs.tokenCount, probe.count)
        let model = self.model
        let computed: Result<KVCache, ModelError> = modelLock.withLock { _ in
            var cache = model.makeCache(reservingCapacity: probe.count)
            do throws(ModelError) { _ = try model.prefill(tokens: probe, cache: &cache, logits: .none) } catch { return .failure(error) }
            return .success(cache)
        }
        let ours: KVCache
        switch computed {
        case .success(let c): ours = c
        case .failure(let e): throw .slotFile("kvtc's forward pass of the probe failed: \(e)")
        }
        let p = model.geometry.featuresPerToken
        var diff = 0.0, norm = 0.0
        for i in 0..<(n * p) {
            let d = Double(theirs.keys[i] - ours.keys[i])
            diff += d * d
            norm += Double(ours.keys[i]) * Double(ours.keys[i])
        }
        let relative = (diff / max(norm, 1e-30)).squareRoot()
        guard n > 0, relative < ModelFingerprint.probeTolerance else {
            throw .foreignModel("the keys of a probe prompt differ from kvtc's by \(relative) (relative RMS; same model: < \(ModelFingerprint.probeTolerance))")
        }
        layouts.withLock { $0[b] = layout }
        await book.setDown(b, false)
    }
}

/// What identifies a model across engines: the GGUF's metadata as llama-server reports it.
public struct ModelFingerprint: Sendable, Equatable {
    public var vocabularySize: Int
    public var embedding: Int
    public var trainedContext: Int

    /// Relative RMS difference below which a probe prompt's keys from llama-server count as
    /// the same model's: F16 storage and another engine's arithmetic over the same weights
    /// differ by ~1e-3 to 1e-2; another model's keys differ by ~1.
    public static let probeTolerance = 0.05

    public init(model: any LanguageModel) {
        vocabularySize = model.dimensions.vocabularySize
        embedding = model.dimensions.embedding
        trainedContext = model.dimensions.contextLength
    }

    /// Refuses a server whose model differs from this one.
    func check(_ m: UpstreamModel, url: String) throws(LlamaServerEngineError) {
        var differences: [String] = []
        if m.vocabularySize != vocabularySize { differences.append("vocabulary \(m.vocabularySize) vs \(vocabularySize)") }
        if m.embedding != embedding { differences.append("embedding \(m.embedding) vs \(embedding)") }
        if m.trainedContext != trainedContext { differences.append("trained context \(m.trainedContext) vs \(trainedContext)") }
        guard differences.isEmpty else {
            throw .foreignModel("\(url) serves \(m.modelPath): \(differences.joined(separator: ", "))")
        }
    }
}
