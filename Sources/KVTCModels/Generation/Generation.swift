import Foundation
import KVTCCache
import KVTCNumerics
import KVTCTokenizers

/// Why generation ended.
public enum StopReason: String, Sendable, Codable {
    /// A stop token (EOS or the chat template's end of turn) was produced.
    case endOfSequence = "eos"
    /// The requested number of tokens was produced.
    case length
    /// The model's context is full.
    case contextFull = "context"
    /// The token callback asked to stop (e.g. the client went away).
    case cancelled
}

/// The outcome of a generation.
public struct GenerationResult: Sendable {
    /// Generated token ids (without the stop token).
    public var tokens: [Int]
    /// Generated text.
    public var text: String
    /// Prompt tokens fed in this call (0 when generation continued from given logits).
    public var promptTokenCount: Int
    /// Seconds spent on the prompt (prefill).
    public var prefillSeconds: Double
    /// Seconds from the start of decoding to the first sampled token.
    public var firstTokenSeconds: Double
    /// Seconds spent generating.
    public var decodeSeconds: Double
    /// Why generation stopped.
    public var stopReason: StopReason
}

/// The perplexity of a token sequence under the model.
public struct PerplexityResult: Sendable, Codable, Equatable {
    /// `exp(meanNegativeLogLikelihood)`.
    public var perplexity: Double
    /// Mean negative log-likelihood in nats.
    public var meanNegativeLogLikelihood: Double
    /// Number of predictions scored (tokens - 1).
    public var predictions: Int
}

extension LanguageModel {
    /// The decode loop every front end uses (the `generate` tool, chat, the server): samples
    /// from `logits` (the prediction after everything `cache` holds), feeds each sampled
    /// token back, and stops at a stop token, after `maxTokens`, when the context is full or
    /// when `onToken` returns `false`.
    ///
    /// The last sampled token is not fed to the cache: `cache` ends holding the tokens
    /// whose successors were predicted.
    ///
    /// - Parameter onToken: receives each token id and the text it completes (empty while
    ///   a multi-byte character is incomplete; a final call with id -1 flushes the rest).
    public func generate(after logits: [Float], cache: inout KVCache, maxTokens: Int,
                         sampling: SamplingOptions = .greedy,
                         onToken: (Int, String) -> Bool = { _, _ in true }) throws(ModelError) -> GenerationResult {
        var sampler = Sampler(sampling)
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        let stops = stopTokens
        let limit = dimensions.contextLength
        let clock = Stopwatch()
        var logits = logits
        var out: [Int] = []
        var text = ""
        var reason = StopReason.length
        var firstTokenSeconds = 0.0
        while out.count < maxTokens {
            let next = sampler.sample(logits)
            if out.isEmpty { firstTokenSeconds = clock.elapsed }
            if stops.contains(next) { reason = .endOfSequence; break }
            out.append(next)
            let piece = decoder.append(next)
            text += piece
            if !onToken(next, piece) { reason = .cancelled; break }
            if out.count == maxTokens { break }
            if let last = cache.positions.last, last + 1 >= limit { reason = .contextFull; break }
            logits = try decodeStep(token: next, cache: &cache)
        }
        let rest = decoder.flush()
        if !rest.isEmpty { text += rest; _ = onToken(-1, rest) }
        return GenerationResult(tokens: out, text: text, promptTokenCount: 0, prefillSeconds: 0,
                                firstTokenSeconds: firstTokenSeconds, decodeSeconds: clock.elapsed,
                                stopReason: reason)
    }

    /// Prefills `promptTokens` after whatever `cache` holds, then generates
    /// (``generate(after:cache:maxTokens:sampling:onToken:)``).
    public func generate(promptTokens: [Int], cache: inout KVCache, maxTokens: Int,
                         sampling: SamplingOptions = .greedy,
                         onToken: (Int, String) -> Bool = { _, _ in true }) throws(ModelError) -> GenerationResult {
        let clock = Stopwatch()
        let logits = try prefill(tokens: promptTokens, cache: &cache, logits: .last).elements
        let prefillSeconds = clock.elapsed
        var result = try generate(after: logits, cache: &cache, maxTokens: maxTokens, sampling: sampling,
                                  onToken: onToken)
        result.promptTokenCount = promptTokens.count
        result.prefillSeconds = prefillSeconds
        return result
    }

    /// Generates a chat reply to `user` (with the template's default system prompt unless
    /// `system` is given) in a fresh cache.
    public func generate(user: String, system: String? = nil, maxTokens: Int,
                         sampling: SamplingOptions = .greedy,
                         onToken: (Int, String) -> Bool = { _, _ in true }) throws(ModelError) -> GenerationResult {
        let prompt = chatPromptTokens(user: user, system: system)
        var cache = makeCache(reservingCapacity: prompt.count + maxTokens)
        return try generate(promptTokens: prompt, cache: &cache, maxTokens: maxTokens,
                            sampling: sampling, onToken: onToken)
    }

    /// Perplexity of `tokens[1...]` given their prefixes (and, if `cache` is given, the
    /// context it holds; the cache passed in is not modified).
    ///
    /// Logits are computed in blocks of rows so memory stays bounded for long inputs.
    public func perplexity(tokens: [Int], cache existing: KVCache? = nil) throws(ModelError) -> PerplexityResult {
        guard tokens.count >= 2 else { throw .emptyInput("perplexity needs at least two tokens") }
        var cache = existing ?? makeCache(reservingCapacity: tokens.count)
        let hidden = try hiddenStates(tokens: tokens, cache: &cache, startPosition: nil, rows: .all, observer: nil)
        var nll = 0.0
        let e = dimensions.embedding, v = dimensions.vocabularySize
        let block = 128
        var r0 = 0
        let predictions = tokens.count - 1
        while r0 < predictions {
            let r1 = min(predictions, r0 + block)
            let sub = Matrix(rows: r1 - r0, columns: e, elements: Array(hidden.elements[(r0 * e)..<(r1 * e)]))
            let lg = try logits(hidden: sub)
            lg.elements.withUnsafeBufferPointer { b in
                for r in 0..<(r1 - r0) {
                    nll += negativeLogLikelihood(b.baseAddress! + r * v, count: v, target: tokens[r0 + r + 1])
                }
            }
            r0 = r1
        }
        let mean = nll / Double(predictions)
        return PerplexityResult(perplexity: Foundation.exp(mean), meanNegativeLogLikelihood: mean,
                                predictions: predictions)
    }

    /// Prefills `tokens` like ``prefill(tokens:cache:startPosition:logits:)`` and returns, for
    /// every token in the cache afterwards, the attention the last `window` tokens pay to it
    /// (summed over layers, heads and those queries): the observation-window score that
    /// SnapKV-style eviction keeps tokens by.
    public func prefillObservingAttention(tokens: [Int], cache: inout KVCache, window: Int) throws(ModelError) -> [Float] {
        guard !tokens.isEmpty else { throw .emptyInput("prefill needs at least one token") }
        let w = max(1, min(window, tokens.count, prefillChunk))
        if tokens.count > w {
            _ = try prefill(tokens: Array(tokens.dropLast(w)), cache: &cache, logits: .none)
        }
        let observer = AttentionObserver(tokens: cache.tokenCount + w)
        _ = try hiddenStates(tokens: Array(tokens.suffix(w)), cache: &cache, startPosition: nil, rows: .none,
                             observer: observer)
        return observer.scores
    }
}

/// `-log softmax(logits)[target]`, accumulated in double precision.
@_optimize(speed)
func negativeLogLikelihood(_ logits: UnsafePointer<Float>, count: Int, target: Int) -> Double {
    var mx = logits[0]
    for i in 1..<count where logits[i] > mx { mx = logits[i] }
    var sum = 0.0
    for i in 0..<count { sum += Foundation.exp(Double(logits[i] - mx)) }
    return Foundation.log(sum) - Double(logits[target] - mx)
}
