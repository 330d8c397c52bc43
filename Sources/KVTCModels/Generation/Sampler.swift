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
    private var random: SplitMix64

    public init(_ options: SamplingOptions = .greedy) {
        self.options = options
        self.random = SplitMix64(seed: options.seed &+ 0x9E37_79B9_7F4A_7C15)
    }

    /// The index of the largest logit (the first on ties).
    public static func argmax(_ logits: [Float]) -> Int {
        var best = 0
        for i in 1..<logits.count where logits[i] > logits[best] { best = i }
        return best
    }

    /// Uniform in [0, 1) with 53 random bits.
    mutating func uniform() -> Double {
        Double(random.next() >> 11) / Double(1 << 53)
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
