import Dispatch
import Foundation
import KVTCCache
import KVTCModels
import KVTCNumerics
import KVTCStore
import KVTCTokenizers

/// Errors of the inference engine.
public enum EngineError: Error, Equatable, CustomStringConvertible {
    /// The request cannot be served (empty prompt, context too long, bad token).
    case invalidRequest(String)
    /// The model failed.
    case model(ModelError)
    /// The upstream engine failed or could not be reached (its process died, refused the
    /// connection, or answered with a server error).
    case upstream(String)

    public var description: String {
        switch self {
        case .invalidRequest(let m): return m
        case .model(let e): return e.description
        case .upstream(let m): return "upstream engine: \(m)"
        }
    }
}

/// One generation request, in tokens.
public struct GenerationRequest: Sendable {
    /// Prompt token ids (at least one).
    public var promptTokens: [Int]
    /// Most tokens to generate.
    public var maxTokens: Int
    /// Greedy or sampled.
    public var sampling: SamplingOptions
    /// Whether to restore the longest stored prefix before prefill.
    public var restore: Bool
    /// Whether to store the cache afterwards.
    public var store: Bool
    /// Whose entries the request may restore and writes (a tenant, optionally salted).
    public var namespace: StoreNamespace
    /// Asked before each generated token: `true` stops the generation (the client went away
    /// or its deadline passed).
    public var isCancelled: @Sendable () -> Bool

    public init(promptTokens: [Int], maxTokens: Int, sampling: SamplingOptions = .greedy,
                restore: Bool = true, store: Bool = true, namespace: StoreNamespace = .shared,
                isCancelled: @escaping @Sendable () -> Bool = { false }) {
        self.promptTokens = promptTokens
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.restore = restore
        self.store = store
        self.namespace = namespace
        self.isCancelled = isCancelled
    }
}

/// What a generation did and how long each step took.
public struct GenerationOutcome: Sendable, Codable, Equatable {
    /// Generated token ids (without the stop token).
    public var tokens: [Int]
    /// Generated text.
    public var text: String
    /// Why generation ended.
    public var stopReason: StopReason
    /// Prompt tokens.
    public var promptTokens: Int
    /// Prompt tokens restored from the store instead of recomputed.
    public var cachedTokens: Int
    /// Prompt tokens run through the model.
    public var prefilledTokens: Int
    /// Seconds to look up and restore the stored prefix.
    public var restoreSeconds: Double
    /// Seconds to prefill the rest of the prompt.
    public var prefillSeconds: Double
    /// Seconds from the request to the first generated token.
    public var timeToFirstTokenSeconds: Double
    /// Seconds generating after the first token.
    public var decodeSeconds: Double
    /// Seconds storing the cache afterwards.
    public var storeSeconds: Double
    /// Chunks newly written to the store.
    public var chunksWritten: Int

    public init(tokens: [Int], text: String, stopReason: StopReason, promptTokens: Int, cachedTokens: Int, prefilledTokens: Int,
                restoreSeconds: Double, prefillSeconds: Double, timeToFirstTokenSeconds: Double, decodeSeconds: Double,
                storeSeconds: Double, chunksWritten: Int) {
        self.tokens = tokens
        self.text = text
        self.stopReason = stopReason
        self.promptTokens = promptTokens
        self.cachedTokens = cachedTokens
        self.prefilledTokens = prefilledTokens
        self.restoreSeconds = restoreSeconds
        self.prefillSeconds = prefillSeconds
        self.timeToFirstTokenSeconds = timeToFirstTokenSeconds
        self.decodeSeconds = decodeSeconds
        self.storeSeconds = storeSeconds
        self.chunksWritten = chunksWritten
    }
}

/// Moves a value into a closure that runs on another queue, so that it arrives there
/// uniquely referenced and can be mutated in place.
private final class Handoff<Value>: @unchecked Sendable {
    private var value: Value?
    init(_ value: Value) { self.value = value }
    /// The value; the handoff no longer holds it. Called once.
    func take() -> Value {
        let v = value!
        value = nil
        return v
    }
}

/// kvtc's own engine: runs the model in this process, restoring and storing caches through a
/// ``CacheStore``.
///
/// Forward passes run one at a time on a dedicated serial queue (never on the Swift
/// concurrency pool), so any number of requests may call ``generate(_:onToken:)``
/// concurrently: their lookups and restores overlap, their passes are serialized.
public final class LocalEngine: Engine {
    /// The model.
    public let model: any LanguageModel
    /// The model as clients see it.
    public let card: ModelCard
    /// The store, or `nil` to recompute every prompt.
    public let store: CacheStore?
    private let queue = DispatchQueue(label: "kvtc.model", qos: .userInitiated)
    private let observer: (@Sendable (GenerationOutcome) -> Void)?
    private let fallbacks = Locked(0)

    /// Requests whose restored cache the model refused, answered by recomputing instead.
    public var restoreFallbacks: Int { fallbacks.current }

    public var counters: EngineCounters {
        var c = EngineCounters()
        c.restoreFallbacks = fallbacks.current
        return c
    }

    public func promptTokens(chat messages: [ChatMessage]) async throws(EngineError) -> [Int] {
        model.chatPromptTokens(messages)
    }

    public func promptTokens(text: String) async throws(EngineError) -> [Int] {
        model.tokenizer.encode(text, addBOS: model.tokenizer.addBOS)
    }

    public func generate(_ request: GenerationRequest) -> AsyncThrowingStream<GenerationEvent, any Error> {
        Self.eventStream { continuation, consumerGone throws(EngineError) in
            try await self.generate(request) { _, text in
                continuation.yield(.piece(text))
                return !request.isCancelled() && !consumerGone()
            }
        }
    }

    /// An engine for `model` with an optional `store`; `observer` sees every outcome (metrics).
    /// Responses name the model `name` (by default its GGUF file's name).
    public init(model: any LanguageModel, store: CacheStore?, name: String? = nil,
                observer: (@Sendable (GenerationOutcome) -> Void)? = nil) {
        self.model = model
        self.card = ModelCard(name: name ?? URL(fileURLWithPath: model.path).lastPathComponent, identity: model.identity,
                              contextLength: model.dimensions.contextLength, vocabularySize: model.dimensions.vocabularySize)
        self.store = store
        self.observer = observer
    }

    /// Runs work on the model queue.
    private func onModelQueue<T: Sendable>(_ body: @escaping @Sendable () throws(EngineError) -> T) async throws(EngineError) -> T {
        let result: Result<T, EngineError> = await withCheckedContinuation { continuation in
            queue.async {
                do throws(EngineError) { continuation.resume(returning: .success(try body())) } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }

    /// Generates for `request`, calling `onToken` with each token id and the text it
    /// completes (on the model queue; keep it short). Returning `false` (or the request's
    /// `isCancelled`) stops generation (``StopReason/cancelled``), e.g. when the client went away.
    public func generate(_ request: GenerationRequest,
                         onToken: @escaping @Sendable (Int, String) -> Bool = { _, _ in true }) async throws(EngineError) -> GenerationOutcome {
        let clock = Date()
        let prompt = request.promptTokens
        try validate(request)
        // Restore the longest stored prefix, leaving at least one token to prefill.
        var restored: RestoredPrefix?
        if request.restore, let store, prompt.count > 1 {
            restored = await store.restore(tokens: Array(prompt.dropLast()), namespace: request.namespace,
                                           reservingCapacity: prompt.count + request.maxTokens)
        }
        let restoreSeconds = Date().timeIntervalSince(clock)
        let model = self.model
        // Hand the cache to the model queue as its only reference: a second one (here or in
        // `restored`) would make the prefill's first append copy the whole cache.
        let handoff = Handoff(restored?.cache ?? model.makeCache(reservingCapacity: prompt.count + request.maxTokens))
        restored?.cache.removeAll()
        let restoredTokens = restored?.matchedTokens ?? 0
        let fallbacks = self.fallbacks
        var (outcome, cache, held) = try await onModelQueue { () throws(EngineError) -> (GenerationOutcome, KVCache, [Int]) in
            var cache = handoff.take()
            var cached = restoredTokens
            let prefillClock = Stopwatch()
            let result: GenerationResult
            let prefillSeconds: Double, decodeStart: Double
            do throws(ModelError) {
                var logits: [Float]
                do throws(ModelError) {
                    logits = try model.prefill(tokens: Array(prompt[cached...]), cache: &cache, logits: .last).elements
                } catch {
                    // The store checks every entry's shape and values, so a restored cache
                    // should always fit; if one still does not, recompute rather than fail.
                    guard cached > 0 else { throw error }
                    fallbacks.withLock { $0 += 1 }
                    cached = 0
                    cache = model.makeCache(reservingCapacity: prompt.count + request.maxTokens)
                    logits = try model.prefill(tokens: prompt, cache: &cache, logits: .last).elements
                }
                prefillSeconds = prefillClock.elapsed
                decodeStart = Date().timeIntervalSince(clock)
                result = try model.generate(after: logits, cache: &cache, maxTokens: request.maxTokens,
                                            sampling: request.sampling) { id, piece in onToken(id, piece) && !request.isCancelled() }
            } catch {
                throw .model(error)
            }
            // The cache holds the prompt and every generated token but the last.
            let held = prompt + result.tokens.prefix(cache.tokenCount - prompt.count)
            let outcome = GenerationOutcome(tokens: result.tokens, text: result.text, stopReason: result.stopReason,
                                            promptTokens: prompt.count, cachedTokens: cached,
                                            prefilledTokens: prompt.count - cached, restoreSeconds: restoreSeconds,
                                            prefillSeconds: prefillSeconds,
                                            timeToFirstTokenSeconds: decodeStart + result.firstTokenSeconds,
                                            decodeSeconds: result.decodeSeconds, storeSeconds: 0, chunksWritten: 0)
            return (outcome, cache, held)
        }
        if request.store, let store {
            let storeClock = Date()
            if let receipt = try? await store.store(tokens: held, cache: cache, namespace: request.namespace,
                                                    superseding: restored?.tailKey) {
                outcome.chunksWritten = receipt.chunksWritten
            }
            outcome.storeSeconds = Date().timeIntervalSince(storeClock)
        }
        observer?(outcome)
        return outcome
    }

    /// Seconds to prefill `tokens` from scratch (no store), for benchmarks.
    public func recomputeSeconds(tokens: [Int]) async throws(EngineError) -> Double {
        let model = self.model
        return try await onModelQueue { () throws(EngineError) -> Double in
            var cache = model.makeCache(reservingCapacity: tokens.count)
            let clock = Date()
            do throws(ModelError) { _ = try model.prefill(tokens: tokens, cache: &cache, logits: .last) } catch { throw .model(error) }
            return Date().timeIntervalSince(clock)
        }
    }

    /// The cache of `tokens` computed by the model (for benchmarks and calibration).
    public func computeCache(tokens: [Int]) async throws(EngineError) -> KVCache {
        let model = self.model
        return try await onModelQueue { () throws(EngineError) -> KVCache in
            var cache = model.makeCache(reservingCapacity: tokens.count)
            do throws(ModelError) { _ = try model.prefill(tokens: tokens, cache: &cache, logits: .none) } catch { throw .model(error) }
            return cache
        }
    }
}
