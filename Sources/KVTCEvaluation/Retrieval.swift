import Foundation
import KVTCCache
import KVTCCodec
import KVTCModels

/// Exact-match rate of a passkey retrieval task for one method.
public struct RetrievalResult: Codable, Sendable {
    public var method: String
    public var setting: String
    public var trials: Int
    public var exact_matches: Int
    public var rate: Double { Double(exact_matches) / Double(max(trials, 1)) }

    enum CodingKeys: String, CodingKey { case method, setting, trials, exact_matches, rate }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(method, forKey: .method); try c.encode(setting, forKey: .setting)
        try c.encode(trials, forKey: .trials); try c.encode(exact_matches, forKey: .exact_matches); try c.encode(rate, forKey: .rate)
    }
    public init(method: String, setting: String, trials: Int, exact_matches: Int) {
        self.method = method; self.setting = setting; self.trials = trials; self.exact_matches = exact_matches
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        method = try c.decode(String.self, forKey: .method); setting = try c.decode(String.self, forKey: .setting)
        trials = try c.decode(Int.self, forKey: .trials); exact_matches = try c.decode(Int.self, forKey: .exact_matches)
    }
}

/// A passkey task: a number stated once inside long filler text, asked for at the end. The
/// statement lands in the compressed part of the cache; the question in the exact window.
public struct PasskeyTask: Sendable {
    public struct Trial: Sendable {
        public var passkey: String
        /// Prompt tokens (BOS first); the cache holds all but the last.
        public var prompt: [Int]
    }

    public let trials: [Trial]

    /// Builds `count` trials of about `contextTokens` tokens with the fact at varying depths.
    public init(model: any LanguageModel, count: Int = 6, contextTokens: Int = 1024, seed: UInt64 = 7) {
        let filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
        let fillerTokens = model.tokenizer.encode(filler).count
        var trials: [Trial] = []
        var state = seed
        for i in 0..<count {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let key = String(10000 + Int((state >> 33) % 90000))
            let fact = "The pass key is \(key). Remember it. \(key) is the pass key. "
            let question = "What is the pass key? The pass key is"
            let repeats = max(4, (contextTokens - 60) / fillerTokens)
            // Depth between 15% and 60% of the context: always inside the compressed part.
            let depth = max(1, repeats * (15 + 45 * i / max(1, count - 1)) / 100)
            let text = "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. "
                + String(repeating: filler, count: depth) + fact + String(repeating: filler, count: repeats - depth) + question
            trials.append(Trial(passkey: key, prompt: [model.tokenizer.bosID ?? 1] + model.tokenizer.encode(text)))
        }
        self.trials = trials
    }

    /// Greedy answer (at most 8 tokens) from a cache of everything but the prompt's last token.
    static func answer(model: any LanguageModel, cache: KVCache, lastToken: Int) throws -> String {
        var c = cache
        let logits = try model.prefill(tokens: [lastToken], cache: &c, startPosition: cache.positions.last! + 1, logits: .last).elements
        return try model.generate(after: logits, cache: &c, maxTokens: 8).text
    }

    /// Prefills every trial's prompt (all but its last token) once; with a score book the
    /// attention scores are recorded for attention-based eviction.
    public func prepare(model: any LanguageModel, scoreBook: AttentionScoreBook? = nil) throws -> [KVCache] {
        try trials.map { t in
            if let scoreBook { return try scoreBook.prefill(model: model, tokens: Array(t.prompt.dropLast())) }
            var cache = model.makeCache()
            _ = try model.prefill(tokens: Array(t.prompt.dropLast()), cache: &cache, logits: .none)
            return cache
        }
    }

    /// Runs the task with the exact caches (compressor nil) or through a compressor.
    public func run(model: any LanguageModel, caches: [KVCache], compressor: (any CacheCompressor)?) throws -> RetrievalResult {
        var hits = 0
        for (t, exact) in zip(trials, caches) {
            var cache = exact
            if let compressor { cache = try compressor.decompress(compressor.compress(cache).bytes) }
            let a = try Self.answer(model: model, cache: cache, lastToken: t.prompt.last!)
            let digits = a.filter(\.isNumber)
            if digits.hasPrefix(t.passkey) { hits += 1 }
        }
        return RetrievalResult(method: compressor?.method ?? "exact", setting: compressor?.setting ?? "-", trials: trials.count, exact_matches: hits)
    }
}
