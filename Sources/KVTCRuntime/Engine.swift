import Foundation
import KVTCNumerics
import KVTCStore
import KVTCTokenizers

/// What a client sees of the model an engine serves.
public struct ModelCard: Sendable, Equatable {
    /// The name responses carry (`model` in OpenAI's API).
    public var name: String
    /// What identifies the weights (SHA-256 of the GGUF file).
    public var identity: String
    /// Longest prompt plus completion the engine accepts, in tokens.
    public var contextLength: Int
    /// Tokens in the vocabulary.
    public var vocabularySize: Int

    public init(name: String, identity: String, contextLength: Int, vocabularySize: Int) {
        self.name = name
        self.identity = identity
        self.contextLength = contextLength
        self.vocabularySize = vocabularySize
    }
}

/// One step of a generation, in the order a client receives them.
public enum GenerationEvent: Sendable, Equatable {
    /// Text the model produced (possibly empty when a token completes no character).
    case piece(String)
    /// The generation ended; the outcome has usage, timings and the finish reason.
    case finished(GenerationOutcome)
}

/// Counters an engine keeps beside the store's (for `/metrics`).
public struct EngineCounters: Sendable, Equatable {
    /// Requests whose restored cache the model (or the upstream engine) refused and that were
    /// answered by recomputing instead.
    public var restoreFallbacks = 0
    /// Restores into an upstream engine's slot (0 for the local engine).
    public var upstreamRestores = 0
    /// Restores the upstream engine then did not reuse (it reported fewer cached tokens than
    /// were restored): for llama-server and a sliding-window model, a sign it runs without
    /// `--swa-full`, which it needs to continue from any restored slot, its own included.
    public var upstreamRestoresUnused = 0
    /// Upstream slot saves stored in the store.
    public var upstreamSaves = 0
    /// Upstream slot saves refused by kvtc's checks (damaged, foreign model, mismatched tokens)
    /// or not taken by the store.
    public var upstreamSavesRefused = 0
    /// Requests whose upstream backend failed (connection refused or reset, 5xx).
    public var upstreamFailures = 0

    public init() {}
}

/// The seam between the HTTP server, the tools and the benchmarks on one side and whatever
/// runs the model on the other: kvtc's own forward pass (``LocalEngine``) or an engine in
/// another process (`LlamaServerEngine` in KVTCLlamaServer).
///
/// An engine renders chats and tokenizes exactly as its model expects, restores the longest
/// prefix its store holds for the request's namespace, generates, and stores the new cache.
public protocol Engine: Sendable {
    /// The model served.
    var card: ModelCard { get }
    /// The compressed store, or `nil` when every prompt is recomputed.
    var store: CacheStore? { get }
    /// The engine's own counters.
    var counters: EngineCounters { get }
    /// The prompt tokens of a chat, rendered with the model's template and a generation prompt.
    func promptTokens(chat messages: [ChatMessage]) async throws(EngineError) -> [Int]
    /// The prompt tokens of plain text (with the model's BOS when it takes one).
    func promptTokens(text: String) async throws(EngineError) -> [Int]
    /// Generates for `request`: text pieces, then one ``GenerationEvent/finished(_:)``.
    ///
    /// The generation stops within one token (finish reason ``KVTCModels/StopReason/cancelled``)
    /// once `request.isCancelled()` answers `true` or the consumer stops iterating. An error
    /// is an ``EngineError``.
    func generate(_ request: GenerationRequest) -> AsyncThrowingStream<GenerationEvent, any Error>
}

extension Engine {
    /// Checks `request` against the card: a non-empty prompt of vocabulary tokens that, with
    /// `maxTokens`, fits the context (the check both engines make before queueing).
    public func validate(_ request: GenerationRequest) throws(EngineError) {
        let prompt = request.promptTokens
        guard !prompt.isEmpty else { throw .invalidRequest("the prompt is empty") }
        guard request.maxTokens >= 0 else { throw .invalidRequest("max_tokens must not be negative") }
        guard prompt.count + request.maxTokens <= card.contextLength else {
            throw .invalidRequest("prompt (\(prompt.count) tokens) plus max_tokens (\(request.maxTokens)) exceeds the context of \(card.contextLength) tokens")
        }
        if let bad = prompt.first(where: { $0 < 0 || $0 >= card.vocabularySize }) {
            throw .invalidRequest("token id \(bad) is outside the vocabulary")
        }
    }

    /// The event stream of a generation that `body` runs in a task: it yields pieces to the
    /// continuation, is told (by its second argument) when the consumer has gone, and
    /// returns the outcome, which ends the stream; a consumer that stops iterating cancels it.
    public static func eventStream(
        _ body: @escaping @Sendable (AsyncThrowingStream<GenerationEvent, any Error>.Continuation,
                                     @escaping @Sendable () -> Bool) async throws(EngineError) -> GenerationOutcome
    ) -> AsyncThrowingStream<GenerationEvent, any Error> {
        let (events, continuation) = AsyncThrowingStream<GenerationEvent, any Error>.makeStream()
        let consumerGone = Locked(false)
        let task = Task {
            do throws(EngineError) {
                let outcome = try await body(continuation) { consumerGone.current || Task.isCancelled }
                continuation.yield(.finished(outcome))
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { termination in
            consumerGone.withLock { $0 = true }
            if case .cancelled = termination { task.cancel() }
        }
        return events
    }

    /// Runs `request` to its end, collecting the outcome (pieces are in its text).
    public func complete(_ request: GenerationRequest) async throws(EngineError) -> GenerationOutcome {
        do {
            for try await event in generate(request) {
                if case .finished(let outcome) = event { return outcome }
            }
        } catch let error as EngineError {
            throw error
        } catch {
            throw .upstream(String(describing: error))
        }
        throw .upstream("the engine ended the generation without an outcome")
    }
}
