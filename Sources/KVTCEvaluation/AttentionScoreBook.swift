import Foundation
import KVTCCache
import KVTCModels

/// Attention scores recorded when caches are produced, for attention-based eviction
/// (SnapKV-style: the attention the last prompt tokens pay to every cached token, summed
/// over layers and heads). A serving engine computes these during prefill; the harness
/// records them per cache and the eviction codec looks them up by the cache's contents.
public final class AttentionScoreBook: @unchecked Sendable {
    private let lock = NSLock()
    private var scores: [Fingerprint: [Float]] = [:]
    /// Query tokens at the end of the prompt whose attention is observed.
    public let observationWindow: Int

    public init(observationWindow: Int = 32) { self.observationWindow = observationWindow }

    struct Fingerprint: Hashable {
        var tokens: Int
        var first: Int
        var last: Int
        var sample: [UInt32]

        init(_ c: KVCache) {
            tokens = c.tokenCount
            first = c.positions.first ?? -1
            last = c.positions.last ?? -1
            let n = c.keys.count
            sample = (0..<64).map { i in n == 0 ? 0 : c.keys[(i * 7919) % n].bitPattern ^ c.values[(i * 104729) % n].bitPattern }
        }
    }

    /// Prefills `tokens` into a fresh cache while observing attention, records the scores.
    public func prefill(model: any LanguageModel, tokens: [Int]) throws -> KVCache {
        var cache = model.makeCache(reservingCapacity: tokens.count)
        let s = try model.prefillObservingAttention(tokens: tokens, cache: &cache, window: observationWindow)
        record(cache, s)
        return cache
    }

    public func record(_ cache: KVCache, _ s: [Float]) {
        lock.withLock { scores[Fingerprint(cache)] = s }
    }

    /// Scores recorded for this cache (empty when none were).
    public func scores(for cache: KVCache) -> [Float] {
        lock.withLock { scores[Fingerprint(cache)] ?? [] }
    }
}
