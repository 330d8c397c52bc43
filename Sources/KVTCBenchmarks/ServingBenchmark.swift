import Foundation
import KVTCCache
import KVTCCalibration
import KVTCCodec
import KVTCModels
import KVTCRedis
import KVTCRedisTier
import KVTCRuntime
import KVTCStore
import KVTCTokenizers

/// How a serving run keeps conversation caches between turns.
public enum CachePolicy: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// No store: every turn prefills its whole prompt.
    case recompute
    /// Exact fp16 chunks in the store.
    case exact
    /// KVTC-compressed chunks in the store.
    case kvtc
    /// KVTC-compressed chunks in a shared Redis tier under a tiny local memory budget: the
    /// cluster holds the conversations (needs a Redis deployment).
    case kvtcRedis = "kvtc-redis"

    public var description: String { rawValue }

    /// The policies that need nothing but this process.
    public static let local: [CachePolicy] = [.recompute, .exact, .kvtc]
}

/// The multi-turn chat workload of `kvtc bench serve` and its settings.
public struct ServingWorkload: Sendable {
    /// Conversations, replayed round-robin turn by turn.
    public var conversations = 10
    /// Turns per conversation.
    public var turns = 8
    /// Context each conversation grows to (tokens).
    public var context = 4224
    /// Tokens generated per reply.
    public var replyTokens = 8

    public init() {}

    /// The user messages of every conversation: consecutive slices of the bundled corpus.
    public func messages(tokenizer: Tokenizer, corpus: Corpus) -> [[String]] {
        let text = (corpus.calibration + corpus.heldOut).map(\.text).joined(separator: "\n\n")
        let ids = tokenizer.encode(text, parseSpecial: false)
        let perTurn = max(16, (context - 64 - turns * (replyTokens + 16)) / turns)
        var out: [[String]] = []
        var offset = 0
        for c in 0..<conversations {
            var messages: [String] = []
            for t in 0..<turns {
                if offset + perTurn > ids.count { offset = (c * 7919 + t * 104_729) % max(1, ids.count - perTurn) }
                let slice = Array(ids[offset..<(offset + perTurn)])
                offset += perTurn
                let piece = (try? tokenizer.decode(slice, skipControl: true)) ?? ""
                messages.append(t == 0 ? "Read this and answer briefly.\n\n\(piece)" : "More:\n\n\(piece)")
            }
            out.append(messages)
        }
        return out
    }
}

/// What one policy measured over the workload.
public struct PolicyRecord: Sendable, Codable {
    /// The policy measured.
    public var policy: CachePolicy
    /// Turns served.
    public var turns: Int
    /// Time to first token: mean, median and 95th percentile over the turns.
    public var ttftMeanSeconds: Double
    public var ttftP50Seconds: Double
    public var ttftP95Seconds: Double
    /// Fraction of turns that restored any stored tokens.
    public var hitRate: Double
    /// Fraction of all prompt tokens that were restored instead of recomputed.
    public var cachedTokenFraction: Double
    /// Bytes the store's tiers held at the end (for a Redis tier: the bytes written to it).
    public var bytesHeld: Int
    /// The memory budget the policy had.
    public var memoryBudgetBytes: Int
    /// Mean seconds restoring and prefilling per turn.
    public var restoreMeanSeconds: Double
    public var prefillMeanSeconds: Double
    /// Seconds the whole replay took.
    public var wallSeconds: Double

    enum CodingKeys: String, CodingKey {
        case policy, turns
        case ttftMeanSeconds = "ttft_mean_seconds", ttftP50Seconds = "ttft_p50_seconds", ttftP95Seconds = "ttft_p95_seconds"
        case hitRate = "hit_rate", cachedTokenFraction = "cached_token_fraction", bytesHeld = "bytes_held"
        case memoryBudgetBytes = "memory_budget_bytes", restoreMeanSeconds = "restore_mean_seconds"
        case prefillMeanSeconds = "prefill_mean_seconds", wallSeconds = "wall_seconds"
    }
}

/// Restoring one long context from each store against recomputing it.
public struct RestoreRecord: Sendable, Codable {
    /// Tokens of the context.
    public var tokens: Int
    /// Median seconds to restore it from the KVTC store and from the exact fp16 store.
    public var kvtcSeconds: Double
    public var exactSeconds: Double
    /// Median seconds to recompute it (prefill from scratch).
    public var recomputeSeconds: Double
    /// Bytes each store wrote for it.
    public var kvtcStoredBytes: Int
    public var exactStoredBytes: Int
    /// With a Redis deployment: median seconds to restore it from Redis alone (KVTC store,
    /// the tier's default timeout; exact fp16 store, a 10 s timeout), and the entry bytes
    /// each restore fetched.
    public var redis: RedisRestoreRecord?
}

/// Restoring the long context through a Redis tier (no local tier in front).
public struct RedisRestoreRecord: Sendable, Codable {
    /// What the client found (standalone node or cluster masters).
    public var topology: String
    /// Median seconds of the KVTC restore from Redis, and from local memory in alternation
    /// with it.
    public var kvtcSeconds: Double
    public var localSeconds: Double
    public var exactSeconds: Double
    /// Entry bytes fetched per restore.
    public var kvtcBytesFetched: Int
    public var exactBytesFetched: Int
    /// Tier errors (timeouts, failed nodes) during the KVTC restores: each made a restore
    /// retry or fall back to a shorter prefix.
    public var kvtcErrors: Int
    /// Mean round trip of the KVTC restores' Redis batches (seconds).
    public var kvtcRoundTripSeconds: Double

    enum CodingKeys: String, CodingKey {
        case kvtcErrors = "kvtc_errors", kvtcRoundTripSeconds = "kvtc_round_trip_seconds"
        case topology
        case kvtcSeconds = "kvtc_seconds", localSeconds = "kvtc_local_memory_seconds", exactSeconds = "exact_fp16_seconds"
        case kvtcBytesFetched = "kvtc_bytes_fetched", exactBytesFetched = "exact_fp16_bytes_fetched"
    }
}

/// The JSON report of `kvtc bench serve` (field names as committed under docs/).
public struct ServingReport: Sendable, Codable {
    /// Model identity and profile content hash.
    public var model: String
    public var profile: String
    public var ratio: Double
    public var conversations: Int
    public var turnsPerConversation: Int
    public var finalContextTokens: Int
    public var policies: [PolicyRecord]
    public var restoreTokens: Int
    public var restore4096Seconds: Double
    public var recompute4096Seconds: Double
    public var restoreExact4096Seconds: Double
    public var kvtcStoredBytes4096: Int
    public var exactStoredBytes4096: Int
    /// Restoring the same context from Redis, when a deployment was given.
    public var redisRestore4096: RedisRestoreRecord?

    /// The report of `policies` measured over `workload`, with the restore measurement `restore`.
    public init(model: String, profile: String, ratio: Double, workload: ServingWorkload, policies: [PolicyRecord],
                restore: RestoreRecord) {
        self.model = model
        self.profile = profile
        self.ratio = ratio
        conversations = workload.conversations
        turnsPerConversation = workload.turns
        finalContextTokens = workload.context
        self.policies = policies
        restoreTokens = restore.tokens
        restore4096Seconds = restore.kvtcSeconds
        recompute4096Seconds = restore.recomputeSeconds
        restoreExact4096Seconds = restore.exactSeconds
        kvtcStoredBytes4096 = restore.kvtcStoredBytes
        exactStoredBytes4096 = restore.exactStoredBytes
        redisRestore4096 = restore.redis
    }

    enum CodingKeys: String, CodingKey {
        case model, profile, ratio, conversations, policies
        case turnsPerConversation = "turns_per_conversation", finalContextTokens = "final_context_tokens"
        case restoreTokens = "restore_tokens", restore4096Seconds = "restore_4096_seconds"
        case recompute4096Seconds = "recompute_4096_seconds", restoreExact4096Seconds = "restore_exact_4096_seconds"
        case kvtcStoredBytes4096 = "kvtc_stored_bytes_4096", exactStoredBytes4096 = "exact_stored_bytes_4096"
        case redisRestore4096 = "redis_restore_4096"
    }
}

/// Errors of the serving benchmark.
public enum ServingBenchmarkError: Error, CustomStringConvertible {
    /// The KVTC store did not give back the context it had just stored.
    case restoreFailed(tokens: Int)
    /// A policy needs a Redis deployment and none was given.
    case noRedis(CachePolicy)

    public var description: String {
        switch self {
        case .restoreFailed(let n): return "the KVTC store did not restore the \(n)-token context it had stored"
        case .noRedis(let p): return "policy \(p) needs a Redis deployment (--redis URL)"
        }
    }
}

/// Replays multi-turn conversations under each ``CachePolicy`` with the same memory budget,
/// and times restoring a long context against recomputing it.
public struct ServingBenchmark: Sendable {
    /// The model served.
    public let model: any LanguageModel
    /// The profile and nominal ratio of the KVTC policy's chunks.
    public let profile: Profile
    public let ratio: Double
    /// The conversations replayed.
    public let workload: ServingWorkload
    /// The memory budget every policy gets (but ``CachePolicy/kvtcRedis``, which gets
    /// ``redisLocalBudget``).
    public let memoryBudget: Int
    /// The Redis deployment of the ``CachePolicy/kvtcRedis`` policy and the Redis restore.
    public let redis: RedisConfiguration?
    /// The local memory budget of the ``CachePolicy/kvtcRedis`` policy.
    public let redisLocalBudget = 4 << 20
    let progress: @Sendable (String) -> Void
    /// Keys of this run (entries expire after an hour).
    let redisPrefix = "kvtc-bench:\(UInt32.random(in: 0...UInt32.max)):"

    /// - Parameter memoryBudget: defaults to the exact fp16 caches of a tenth of the
    ///   conversations at full context.
    public init(model: any LanguageModel, profile: Profile, ratio: Double, workload: ServingWorkload,
                memoryBudget: Int? = nil, redis: RedisConfiguration? = nil,
                progress: @escaping @Sendable (String) -> Void = { _ in }) {
        self.model = model
        self.redis = redis
        self.profile = profile
        self.ratio = ratio
        self.workload = workload
        let fp16PerToken = 4 * model.geometry.featuresPerToken
        self.memoryBudget = memoryBudget ?? fp16PerToken * workload.context * max(1, workload.conversations / 10)
        self.progress = progress
    }

    /// A Redis tier of this run for `label`'s entries, with `timeout` (default: the
    /// deployment's).
    func redisTier(_ label: String, timeout: Double? = nil) throws -> RedisTier {
        guard var configuration = redis else { throw ServingBenchmarkError.noRedis(.kvtcRedis) }
        if let timeout { configuration.timeout = timeout }
        return RedisTier(client: try RedisClient(configuration: configuration),
                         options: RedisTierOptions(keyPrefix: redisPrefix + label + ":", ttl: 3600))
    }

    /// Linear-interpolated percentile `p` (0...1) of `values`.
    public static func percentile(_ values: [Double], _ p: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let s = values.sorted()
        let rank = p * Double(s.count - 1)
        let lo = Int(rank.rounded(.down)), hi = Int(rank.rounded(.up))
        return s[lo] + (s[hi] - s[lo]) * (rank - Double(lo))
    }

    /// Median seconds of `body` over `runs` runs.
    static func median(_ runs: Int, _ body: () async throws -> Double) async rethrows -> Double {
        var times: [Double] = []
        for _ in 0..<runs { times.append(try await body()) }
        return percentile(times, 0.5)
    }

    /// Restores the first `tokens` tokens of the corpus from a KVTC and an exact store and
    /// recomputes them (median of 3 restores and 2 recomputes).
    public func restoreVersusRecompute(tokens: Int, corpus: Corpus) async throws -> RestoreRecord {
        let configuration = StoreConfiguration(tailPrecision: .fp16)
        let recomputeEngine = LocalEngine(model: model, store: nil)
        let text = corpus.heldOut.map(\.text).joined(separator: "\n\n") + corpus.calibration.map(\.text).joined(separator: "\n\n")
        let ids = Array(model.tokenizer.encode(text, parseSpecial: false).prefix(tokens))
        progress("restore vs recompute of \(ids.count) tokens")
        let cache = try await recomputeEngine.computeCache(tokens: ids)
        let kvtcStore = try StoreFactory.kvtcStore(model: model, profile: profile, ratio: ratio,
                                                   tiers: [MemoryTier(budget: 1 << 34)], configuration: configuration)
        let exactStore = try StoreFactory.exactStore(model: model, tiers: [MemoryTier(budget: 1 << 34)], configuration: configuration)
        let kvtcReceipt = try await kvtcStore.store(tokens: ids, cache: cache)
        let exactReceipt = try await exactStore.store(tokens: ids, cache: cache)
        let kvtc = try await Self.median(3) {
            guard let r = await kvtcStore.restore(tokens: ids), r.matchedTokens == ids.count else {
                throw ServingBenchmarkError.restoreFailed(tokens: ids.count)
            }
            return r.seconds
        }
        let exact = await Self.median(3) { await exactStore.restore(tokens: ids)?.seconds ?? .nan }
        let recompute = try await Self.median(2) { try await recomputeEngine.recomputeSeconds(tokens: ids) }
        var record = RestoreRecord(tokens: ids.count, kvtcSeconds: kvtc, exactSeconds: exact, recomputeSeconds: recompute,
                                   kvtcStoredBytes: kvtcReceipt.bytesWritten, exactStoredBytes: exactReceipt.bytesWritten)
        if redis != nil {
            record.redis = try await restoreFromRedis(ids: ids, cache: cache, local: kvtcStore, configuration: configuration)
        }
        return record
    }

    /// Stores the context into Redis alone, once as KVTC chunks and once as exact fp16
    /// ones, and restores each five times (the KVTC restores alternating with restores from
    /// `local`, the same store in memory, so that both see the same machine): median
    /// seconds and bytes fetched per restore.
    func restoreFromRedis(ids: [Int], cache: KVCache, local: CacheStore, configuration: StoreConfiguration) async throws -> RedisRestoreRecord {
        progress("restore of \(ids.count) tokens from Redis")
        let kvtcTier = try redisTier("restore-kvtc")
        let topology = try await kvtcTier.client.connect()
        // The exact entries of a long context are ~100 MB: give them time the product's
        // 50 ms default would not.
        let exactTier = try redisTier("restore-exact", timeout: 10)
        let kvtcStore = try StoreFactory.kvtcStore(model: model, profile: profile, ratio: ratio, tiers: [kvtcTier],
                                                   configuration: configuration)
        let exactStore = try StoreFactory.exactStore(model: model, tiers: [exactTier], configuration: configuration)
        func restore(_ store: CacheStore) async throws -> Double {
            guard let r = await store.restore(tokens: ids), r.matchedTokens == ids.count else {
                throw ServingBenchmarkError.restoreFailed(tokens: ids.count)
            }
            return r.seconds
        }
        let runs = 5
        func measure(_ store: CacheStore, _ tier: RedisTier, alternatingWith other: CacheStore? = nil) async throws
            -> (seconds: Double, other: Double, bytes: Int, errors: Int, roundTrip: Double) {
            _ = try await store.store(tokens: ids, cache: cache)
            await tier.flush()
            let before = await tier.stats()
            var times: [Double] = [], others: [Double] = []
            for _ in 0..<runs {
                if let other { others.append(try await restore(other)) }
                times.append(try await restore(store))
            }
            let after = await tier.stats()
            let trips = (after.roundTrips?.count ?? 0) - (before.roundTrips?.count ?? 0)
            let tripSeconds = (after.roundTrips?.sum ?? 0) - (before.roundTrips?.sum ?? 0)
            return (Self.percentile(times, 0.5), Self.percentile(others, 0.5), (after.bytesRead - before.bytesRead) / runs,
                    after.errors - before.errors, trips > 0 ? tripSeconds / Double(trips) : 0)
        }
        let k = try await measure(kvtcStore, kvtcTier, alternatingWith: local)
        let e = try await measure(exactStore, exactTier)
        return RedisRestoreRecord(topology: "\(topology)", kvtcSeconds: k.seconds, localSeconds: k.other, exactSeconds: e.seconds,
                                  kvtcBytesFetched: k.bytes, exactBytesFetched: e.bytes, kvtcErrors: k.errors,
                                  kvtcRoundTripSeconds: k.roundTrip)
    }

    /// Replays `messages` (per conversation, per turn) under `policy`.
    public func run(_ policy: CachePolicy, messages: [[String]]) async throws -> PolicyRecord {
        let configuration = StoreConfiguration(tailPrecision: .fp16)
        let remote: RedisTier? = policy == .kvtcRedis ? try redisTier("policy") : nil
        let tiers: [any CacheTier] = switch policy {
        case .recompute: []
        case .exact, .kvtc: [MemoryTier(budget: memoryBudget)]
        case .kvtcRedis: [MemoryTier(budget: redisLocalBudget), remote!]
        }
        let store: CacheStore? = switch policy {
        case .exact: try StoreFactory.exactStore(model: model, tiers: tiers, configuration: configuration)
        case .kvtc, .kvtcRedis: try StoreFactory.kvtcStore(model: model, profile: profile, ratio: ratio, tiers: tiers,
                                                           configuration: configuration)
        case .recompute: nil
        }
        if let remote { _ = try await remote.client.connect() }
        let engine = LocalEngine(model: model, store: store)
        var histories = [[ChatMessage]](repeating: [], count: messages.count)
        var ttft: [Double] = [], restore: [Double] = [], prefill: [Double] = []
        var hits = 0, cached = 0, prompt = 0
        let clock = Date()
        let turns = messages.map(\.count).min() ?? 0
        for t in 0..<turns {
            for c in messages.indices {
                histories[c].append(ChatMessage(role: .user, content: messages[c][t]))
                let tokens = model.chatPromptTokens(histories[c])
                let o = try await engine.generate(GenerationRequest(promptTokens: tokens, maxTokens: workload.replyTokens))
                histories[c].append(ChatMessage(role: .assistant, content: o.text))
                // Redis writes are off the request path; let them land before the next turn.
                await remote?.flush()
                ttft.append(o.timeToFirstTokenSeconds)
                restore.append(o.restoreSeconds)
                prefill.append(o.prefillSeconds)
                if o.cachedTokens > 0 { hits += 1 }
                cached += o.cachedTokens
                prompt += o.promptTokens
                progress(String(format: "%@: turn %d/%d, conversation %d/%d: %d tokens, %d cached, TTFT %.2f s",
                                policy.rawValue, t + 1, turns, c + 1, messages.count, o.promptTokens, o.cachedTokens,
                                o.timeToFirstTokenSeconds))
            }
        }
        var held = 0
        for tier in tiers { held += await tier.byteCount }
        if let remote { held += await remote.stats().bytesWritten }
        let n = Double(max(1, ttft.count))
        return PolicyRecord(policy: policy, turns: ttft.count, ttftMeanSeconds: ttft.reduce(0, +) / n,
                            ttftP50Seconds: Self.percentile(ttft, 0.5), ttftP95Seconds: Self.percentile(ttft, 0.95),
                            hitRate: Double(hits) / n, cachedTokenFraction: Double(cached) / Double(max(1, prompt)),
                            bytesHeld: held, memoryBudgetBytes: memoryBudget,
                            restoreMeanSeconds: restore.reduce(0, +) / n, prefillMeanSeconds: prefill.reduce(0, +) / n,
                            wallSeconds: Date().timeIntervalSince(clock))
    }

    /// The whole benchmark: restore vs recompute of `restoreTokens`, then every policy in
    /// `policies` over the workload.
    public func run(policies: [CachePolicy], restoreTokens: Int, corpus: Corpus) async throws -> ServingReport {
        let r = try await restoreVersusRecompute(tokens: restoreTokens, corpus: corpus)
        let messages = workload.messages(tokenizer: model.tokenizer, corpus: corpus)
        var records: [PolicyRecord] = []
        for policy in CachePolicy.allCases where policies.contains(policy) {
            records.append(try await run(policy, messages: messages))
        }
        return ServingReport(model: model.identity, profile: profile.contentHash, ratio: ratio, workload: workload,
                             policies: records, restore: r)
    }
}
