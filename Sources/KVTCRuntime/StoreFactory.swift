import Foundation
import KVTCCalibration
import KVTCCodec
import KVTCModels
import KVTCRedis
import KVTCRedisTier
import KVTCStore

/// Builds the store the server and the tools use: a memory tier with a byte budget,
/// optionally over a disk tier and a Redis tier, holding KVTC-compressed chunks.
public enum StoreFactory {
    /// The tiers for the options: memory first, then disk if a directory is given (the
    /// tier owns a subdirectory of it and locks it; `durable` fsyncs every write), then
    /// Redis if a tier is given.
    public static func tiers(memoryBudget: Int, diskDirectory: String?, diskQuota: Int,
                             durable: Bool = false, redis: RedisTier? = nil) throws(TierError) -> [any CacheTier] {
        var tiers: [any CacheTier] = [MemoryTier(budget: memoryBudget)]
        if let diskDirectory {
            tiers.append(try DiskTier(directory: URL(fileURLWithPath: diskDirectory), quota: diskQuota, synchronous: durable))
        }
        if let redis { tiers.append(redis) }
        return tiers
    }

    /// A Redis tier for `url` (`redis[s]://[user:password@]host:port[,host:port...]`), its
    /// topology found now when the deployment answers within `connectTimeout` seconds.
    ///
    /// An unreachable deployment is not an error: the tier starts, its reads miss and it
    /// connects when the nodes come up. The returned text says which it was.
    /// - Throws: ``RedisError/invalidURL(_:)`` for a malformed URL.
    public static func redisTier(url: String, options: RedisTierOptions = RedisTierOptions(), signer: EntrySigner? = nil,
                                 timeout: Double = RedisConfiguration.defaultTimeout, tlsCAFile: String? = nil,
                                 connectTimeout: Double = 2) async throws(RedisError) -> (RedisTier, String) {
        let client = try RedisClient(configuration: try RedisConfiguration(url: url, timeout: timeout, tlsCAFile: tlsCAFile))
        let tier = RedisTier(client: client, options: options, signer: signer)
        do {
            let topology = try await client.connect(timeout: connectTimeout)
            return (tier, "\(topology)")
        } catch {
            return (tier, "Redis at \(client.configuration.seeds.map(\.description).joined(separator: ",")) is not reachable yet (\(error)); its reads miss until it is")
        }
    }

    /// The shape every entry of `model`'s store must declare.
    static func shape(_ model: any LanguageModel) -> CacheShape { CacheShape(geometry: model.geometry, rope: model.rope, layerAttention: model.layerAttention) }

    /// A KVTC store over `tiers` for `model`'s caches compressed with `profile` at `ratio`.
    public static func kvtcStore(model: any LanguageModel, profile: Profile, ratio: Double, tiers: [any CacheTier],
                                 configuration: StoreConfiguration = StoreConfiguration()) throws -> CacheStore {
        let codec = try CacheStore.kvtcChunkCodec(profile: profile, ratio: ratio)
        let tier: any CacheTier = tiers.count == 1 ? tiers[0] : TieredStore(tiers)
        return try CacheStore(identity: ProducerIdentity(modelHash: model.identity, profile: profile, ratio: ratio),
                              codec: codec, tier: tier, configuration: configuration, shape: shape(model))
    }

    /// An exact store over `tiers` for `model`'s caches (the "exact cache" policy): fp16 by
    /// default, or f32 for restores bit-identical to the computed cache.
    public static func exactStore(model: any LanguageModel, tiers: [any CacheTier], precision: ExactPrecision = .fp16,
                                  configuration: StoreConfiguration = StoreConfiguration(tailPrecision: .fp16)) throws -> CacheStore {
        let tier: any CacheTier = tiers.count == 1 ? tiers[0] : TieredStore(tiers)
        return try CacheStore(identity: ProducerIdentity(modelHash: model.identity, profileHash: "", codecFormatVersion: 1,
                                                         codec: "exact \(precision.rawValue)"),
                              codec: ExactCompressor(precision: precision), tier: tier, configuration: configuration,
                              shape: shape(model))
    }
}

/// What a serving store is made of: tiers, their budgets, and the profile and ratio of its
/// chunks (the options `serve`, `chat` and `bench serve` share).
public struct StoreOptions: Sendable {
    /// Byte budget of the in-memory tier.
    public var memoryBudget = 1 << 30
    /// Directory of the disk tier, or `nil` for memory only.
    public var diskDirectory: String?
    /// Byte quota of the disk tier.
    public var diskQuota = 8 << 30
    /// A profile file, or `nil` for the model's default profile.
    public var profilePath: String?
    /// Nominal compression ratio of stored chunks (a ratio of the profile).
    public var ratio: Double = 16
    /// Tokens per stored chunk.
    public var chunkTokens = 256
    /// Whether the disk tier fsyncs each file and its directory.
    public var diskDurable = false
    /// How chunks are stored.
    public var codec: StoreCodec = .kvtc
    /// A shared Redis tier below memory and disk, if any (see ``StoreFactory/redisTier(url:options:signer:timeout:tlsCAFile:connectTimeout:)``).
    public var redis: RedisTier?

    public init() {}
}

/// How a serving store holds chunks.
public enum StoreCodec: String, Sendable, CaseIterable {
    /// KVTC-compressed chunks (the product).
    case kvtc
    /// Exact f32 chunks and tails: restores are bit-identical to the computed cache (a
    /// reference for tests and the fault harness, ~36x larger than `kvtc` at 16x).
    case exact
}

/// Errors resolving a profile.
public enum ProfileResolutionError: Error, CustomStringConvertible {
    /// The profile file could not be read.
    case unreadable(path: String, ProfileError)
    /// The default profile could not be built.
    case calibration(any Error)

    public var description: String {
        switch self {
        case .unreadable(let p, let e): return "\(p): \(e)"
        case .calibration(let e): return "cannot build the default profile: \(e)"
        }
    }
}

/// Finds the profile a serving store uses.
public enum ProfileResolver {
    /// The profile at `path`, or `model`'s default profile (built from the bundled corpus on
    /// first use and cached).
    public static func profile(path: String?, model: any LanguageModel,
                               progress: @escaping (String) -> Void = { _ in }) throws(ProfileResolutionError) -> Profile {
        if let path {
            do { return try Profile(contentsOf: path) } catch { throw .unreadable(path: path, error) }
        }
        do {
            return try CorpusCalibration.defaultProfile(model: model, corpus: try Corpus.bundled(), progress: progress)
        } catch {
            throw .calibration(error)
        }
    }
}

extension StoreFactory {
    /// The tiers and the KVTC store that `options` describe for `model`.
    public static func store(_ options: StoreOptions, model: any LanguageModel,
                             progress: @escaping (String) -> Void = { _ in }) throws -> (CacheStore, [any CacheTier]) {
        let tiers = try tiers(memoryBudget: options.memoryBudget, diskDirectory: options.diskDirectory,
                              diskQuota: options.diskQuota, durable: options.diskDurable, redis: options.redis)
        if options.codec == .exact {
            let configuration = StoreConfiguration(chunkTokens: options.chunkTokens, tailPrecision: .fp32)
            return (try exactStore(model: model, tiers: tiers, precision: .fp32, configuration: configuration), tiers)
        }
        let profile = try ProfileResolver.profile(path: options.profilePath, model: model, progress: progress)
        let configuration = StoreConfiguration(chunkTokens: options.chunkTokens, tailPrecision: .fp16)
        let store = try kvtcStore(model: model, profile: profile, ratio: options.ratio, tiers: tiers,
                                  configuration: configuration)
        return (store, tiers)
    }
}
