import Foundation
import KVTCCache
import KVTCNumerics

/// How to pick the next token from logits.
public struct SamplingOptions: Sendable, Equatable {
    /// 0 picks the most likely token (greedy); larger values flatten the distribution.
    public var temperature: Float
    /// Keep only the `topK` most likely tokens (0 = all).
    public var topK: Int
    /// Keep the smallest set of tokens whose probability reaches `topP` (1 = all).
    public var topP: Float
    /// Seed of the random generator (sampling is deterministic for a given seed).
    public var seed: UInt64

    public init(temperature: Float = 0, topK: Int = 0, topP: Float = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }

    /// Greedy decoding.
    public static let greedy = SamplingOptions()
}

/// Picks tokens from logits (greedy or temperature / top-k / top-p sampling).
public struct Sampler: Sendable {
    /// The options in use.
    public let options: SamplingOptions
    private var state: UInt64

    public init(_ options: SamplingOptions = .greedy) {
        self.options = options
        self.state = options.seed &+ 0x9E37_79B9_7F4A_7C15
    }

    /// The index of the largest logit (the first on ties).
    public static func argmax(_ logits: [Float]) -> Int {
        var best = 0
        for i in 1..<logits.count where logits[i] > logits[best] { best = i }
        return best
    }

    /// SplitMix64 uniform in [0, 1).
    mutating func uniform() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) / Double(1 << 53)
    }

    /// The next token for `logits`.
    public mutating func sample(_ logits: [Float]) -> Int {
        guard options.temperature > 0 else { return Self.argmax(logits) }
        if options.topK <= 0 && options.topP >= 1 {
            // Plain temperature sampling: no ordering needed.
            let mx = logits[Self.argmax(logits)]
            let weights = logits.map { Double(exp(($0 - mx) / options.temperature)) }
            let total = weights.reduce(0, +)
            var u = uniform() * total
            for i in weights.indices {
                u -= weights[i]
                if u < 0 { return i }
            }
            return Self.argmax(logits)
        }
        var order = Array(logits.indices)
        order.sort { logits[$0] > logits[$1] }
        if options.topK > 0 { order = Array(order.prefix(options.topK)) }
        let mx = logits[order[0]]
        var probs = order.map { Double(exp((logits[$0] - mx) / options.temperature)) }
        let total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        if options.topP < 1 {
            var acc = 0.0, keep = probs.count
            for (i, p) in probs.enumerated() {
                acc += p
                if acc >= Double(options.topP) { keep = i + 1; break }
            }
            order = Array(order.prefix(keep))
            probs = Array(probs.prefix(keep))
            let s = probs.reduce(0, +)
            for i in probs.indices { probs[i] /= s }
        }
        var u = uniform()
        for (i, p) in probs.enumerated() {
            u -= p
            if u < 0 { return order[i] }
        }
        return order[order.count - 1]
    }
}

/// Why generation ended.
public enum StopReason: String, Sendable, Codable {
    /// An end-of-sequence token (`<|im_end|>`, `<|endoftext|>`) was produced.
    case endOfSequence = "eos"
    /// `maxTokens` tokens were produced.
    case length
    /// The callback asked to stop.
    case cancelled
}

/// The outcome of ``LlamaModel/generate(promptTokens:cache:maxTokens:sampling:onToken:)``.
public struct GenerationResult: Sendable {
    /// Generated token ids (without the stop token).
    public var tokens: [Int]
    /// Generated text.
    public var text: String
    /// Prompt tokens fed in this call.
    public var promptTokenCount: Int
    /// Seconds spent on the prompt (prefill).
    public var prefillSeconds: Double
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

extension LlamaModel {
    /// Token ids that end generation: EOS, `<|im_end|>` and `<|endoftext|>`.
    public var stopTokens: Set<Int> {
        var s = Set<Int>()
        if let e = tokenizer.eosID { s.insert(e) }
        for t in ["<|im_end|>", "<|endoftext|>"] { if let id = tokenizer.id(of: t) { s.insert(id) } }
        return s
    }

    /// Generates after `promptTokens`, appending everything to `cache` (which may already
    /// hold earlier context), streaming each token to `onToken`.
    ///
    /// - Parameters:
    ///   - onToken: receives each token id and the text it completes (may be empty while
    ///     a multi-byte character is incomplete); return `false` to stop.
    public func generate(promptTokens: [Int], cache: inout KVCache, maxTokens: Int,
                         sampling: SamplingOptions = .greedy,
                         onToken: (Int, String) -> Bool = { _, _ in true }) throws(ModelError) -> GenerationResult {
        var sampler = Sampler(sampling)
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        let stops = stopTokens
        let clock = Stopwatch()
        var logits = try prefill(tokens: promptTokens, cache: &cache, logits: .last).elements
        let prefillSeconds = clock.elapsed
        var out: [Int] = []
        var text = ""
        var reason = StopReason.length
        let decodeClock = Stopwatch()
        while out.count < maxTokens {
            let next = sampler.sample(logits)
            if stops.contains(next) { reason = .endOfSequence; break }
            out.append(next)
            let piece = decoder.append(next)
            text += piece
            if !onToken(next, piece) { reason = .cancelled; break }
            if out.count == maxTokens { break }
            if let last = cache.positions.last, last + 1 >= config.contextLength { break }
            logits = try decodeStep(token: next, cache: &cache)
        }
        let rest = decoder.flush()
        if !rest.isEmpty { text += rest; _ = onToken(-1, rest) }
        return GenerationResult(tokens: out, text: text, promptTokenCount: promptTokens.count,
                                prefillSeconds: prefillSeconds, decodeSeconds: decodeClock.elapsed,
                                stopReason: reason)
    }

    /// Generates a chat reply to `user` (with the template's default system prompt unless
    /// `system` is given) in a fresh cache.
    public func generate(user: String, system: String? = nil, maxTokens: Int,
                         sampling: SamplingOptions = .greedy,
                         onToken: (Int, String) -> Bool = { _, _ in true }) throws(ModelError) -> GenerationResult {
        let prompt = tokenizer.encode(ChatTemplate.prompt(user: user, system: system))
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
        let hidden = try hiddenStates(tokens: tokens, cache: &cache, startPosition: nil, rows: .all)
        var nll = 0.0
        let e = config.embedding, v = config.vocabularySize
        let block = 128
        var r0 = 0
        let predictions = tokens.count - 1
        while r0 < predictions {
            let r1 = min(predictions, r0 + block)
            let sub = Matrix(rows: r1 - r0, columns: e, elements: Array(hidden.elements[(r0 * e)..<(r1 * e)]))
            let lg = logits(hidden: sub)
            lg.elements.withUnsafeBufferPointer { b in
                for r in 0..<(r1 - r0) {
                    nll += Self.negativeLogLikelihood(b.baseAddress! + r * v, count: v, target: tokens[r0 + r + 1])
                }
            }
            r0 = r1
        }
        let mean = nll / Double(predictions)
        return PerplexityResult(perplexity: Foundation.exp(mean), meanNegativeLogLikelihood: mean,
                                predictions: predictions)
    }

    /// `-log softmax(logits)[target]`, accumulated in double precision.
    @_optimize(speed)
    public static func negativeLogLikelihood(_ logits: UnsafePointer<Float>, count: Int, target: Int) -> Double {
        var mx = logits[0]
        for i in 1..<count where logits[i] > mx { mx = logits[i] }
        var sum = 0.0
        for i in 0..<count { sum += Foundation.exp(Double(logits[i] - mx)) }
        return Foundation.log(sum) - Double(logits[target] - mx)
    }
}
