import Foundation
import KVTCCodec
import KVTCRuntime
import KVTCStore

/// Everything the routes share: the engine (model and store), the tiers for statistics,
/// metrics and limits.
public struct KVTCService: Sendable {
    /// Runs the model with the store.
    public let engine: InferenceEngine
    /// The tiers of the store, fastest first (for `/metrics` and `/health`).
    public let tiers: [any CacheTier]
    /// Request counters and histograms.
    public let metrics: ServerMetrics
    /// The model name reported in responses.
    public var modelName: String
    /// Largest request body accepted (entries uploaded with `PUT /v1/kv/{key}` included).
    public var maxRequestBytes: Int
    /// Largest `max_tokens` accepted.
    public var maxTokensLimit: Int
    /// `max_tokens` when the request gives none.
    public var defaultMaxTokens: Int

    public init(engine: InferenceEngine, tiers: [any CacheTier], metrics: ServerMetrics,
                modelName: String, maxRequestBytes: Int = 64 << 20,
                maxTokensLimit: Int = 4096, defaultMaxTokens: Int = 256) {
        self.engine = engine
        self.tiers = tiers
        self.metrics = metrics
        self.modelName = modelName
        self.maxRequestBytes = maxRequestBytes
        self.maxTokensLimit = maxTokensLimit
        self.defaultMaxTokens = defaultMaxTokens
    }

    /// The store, if the engine has one.
    public var store: CacheStore? { engine.store }

    /// Statistics of every tier.
    public func tierStats() async -> [TierStats] {
        var out: [TierStats] = []
        for t in tiers { out.append(await t.stats()) }
        return out
    }
}
