import Foundation
import KVTCCodec
import KVTCModel
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
                modelName: String = "smollm2-135m-instruct", maxRequestBytes: Int = 64 << 20,
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

/// Builds the store the server and the tools use: a memory tier with a byte budget,
/// optionally over a disk tier, holding KVTC-compressed chunks.
public enum StoreFactory {
    /// The tiers for the options: memory first, then disk if a directory is given.
    public static func tiers(memoryBudget: Int, diskDirectory: String?, diskQuota: Int) throws(TierError) -> [any CacheTier] {
        var tiers: [any CacheTier] = [MemoryTier(budget: memoryBudget)]
        if let diskDirectory {
            tiers.append(try DiskTier(directory: URL(fileURLWithPath: diskDirectory), quota: diskQuota))
        }
        return tiers
    }

    /// A KVTC store over `tiers` for `model`'s caches compressed with `profile` at `ratio`.
    public static func kvtcStore(model: LlamaModel, profile: Profile, ratio: Double, tiers: [any CacheTier],
                                 configuration: StoreConfiguration = StoreConfiguration()) throws -> CacheStore {
        let codec = try CacheStore.kvtcChunkCodec(profile: profile, ratio: ratio)
        let tier: any CacheTier = tiers.count == 1 ? tiers[0] : TieredStore(tiers)
        return try CacheStore(identity: ProducerIdentity(modelHash: model.identity, profile: profile, ratio: ratio),
                              codec: codec, tier: tier, configuration: configuration)
    }

    /// An exact fp16 store over `tiers` for `model`'s caches (the "exact cache" policy).
    public static func exactStore(model: LlamaModel, tiers: [any CacheTier],
                                  configuration: StoreConfiguration = StoreConfiguration(tailPrecision: .fp16)) throws -> CacheStore {
        let tier: any CacheTier = tiers.count == 1 ? tiers[0] : TieredStore(tiers)
        return try CacheStore(identity: ProducerIdentity(modelHash: model.identity, profileHash: "", codecFormatVersion: 1, codec: "exact fp16"),
                              codec: ExactCompressor(precision: .fp16), tier: tier, configuration: configuration)
    }
}
