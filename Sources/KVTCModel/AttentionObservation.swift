import Foundation
import KVTCCache

/// Accumulates the attention probabilities that observed queries pay to every cached token,
/// summed over layers, query heads and queries.
final class AttentionObserver: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var scores: [Float]

    init(tokens: Int) { scores = [Float](repeating: 0, count: tokens) }

    /// Adds `rows` rows of unnormalised probabilities (`columns` keys each, row `i` scaled by
    /// `rowScale[i]`).
    func add(probabilities p: UnsafePointer<Float>, rows: Int, columns: Int, rowScale: [Float]) {
        var local = [Float](repeating: 0, count: columns)
        for r in 0..<rows {
            let s = p + r * columns, k = rowScale[r]
            for j in 0..<columns { local[j] += s[j] * k }
        }
        lock.withLock {
            for j in 0..<min(columns, scores.count) { scores[j] += local[j] }
        }
    }
}

extension LlamaModel {
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
        _ = try hiddenStates(tokens: Array(tokens.suffix(w)), cache: &cache, startPosition: nil, rows: .none, observer: observer)
        return observer.scores
    }
}
