import Foundation
import KVTCCodec
import KVTCRuntime
import KVTCStore
import Logging

/// Who may do what: API keys and tenants, the raw KV routes, and entry signing.
public struct ServerSecurity: Sendable {
    /// Accepted keys (`--api-key-file`); `nil` serves every caller as the shared tenant,
    /// which the command line allows on loopback only.
    public var keys: APIKeys?
    /// Whether `/metrics` is served without a key (`--public-metrics`).
    public var publicMetrics: Bool
    /// Whether the raw KV routes are on (`--kv-api`; they need an admin key).
    public var kvAPI: Bool
    /// Signs exported entries and requires signed uploads (`--kv-secret`).
    public var signer: EntrySigner?

    public init(keys: APIKeys? = nil, publicMetrics: Bool = false, kvAPI: Bool = false, signer: EntrySigner? = nil) {
        self.keys = keys
        self.publicMetrics = publicMetrics
        self.kvAPI = kvAPI
        self.signer = signer
    }
}

/// What one request may cost the server.
public struct ServerLimits: Sendable {
    /// Largest JSON request body.
    public var maxBodyBytes: Int
    /// Largest entry accepted by `PUT /v1/kv/{key}`.
    public var maxEntryBytes: Int
    /// Largest prompt, in UTF-8 bytes of its text (message contents together), checked
    /// before tokenizing.
    public var maxPromptBytes: Int
    /// Generation requests that run at once.
    public var maxConcurrent: Int
    /// Generation requests that may wait for a slot; more are refused with 429.
    public var maxQueue: Int
    /// Seconds a generation request may take, waiting included; at the deadline a waiting
    /// request is refused (503) and a running one stops (finish reason `length`).
    public var requestTimeout: Double
    /// Seconds a connection may stay idle, or take between the bytes of a request, before
    /// it is closed.
    public var idleTimeout: Double

    public init(maxBodyBytes: Int = 1 << 20, maxEntryBytes: Int = 64 << 20, maxPromptBytes: Int = 256 << 10,
                maxConcurrent: Int = 4, maxQueue: Int = 64, requestTimeout: Double = 300, idleTimeout: Double = 30) {
        self.maxBodyBytes = maxBodyBytes
        self.maxEntryBytes = maxEntryBytes
        self.maxPromptBytes = maxPromptBytes
        self.maxConcurrent = maxConcurrent
        self.maxQueue = maxQueue
        self.requestTimeout = requestTimeout
        self.idleTimeout = idleTimeout
    }
}

/// Everything the routes share: the engine (model and store), the tiers for statistics,
/// metrics, limits, admission and security.
public struct KVTCService: Sendable {
    /// Runs the model with the store: kvtc's own engine or one in front of llama-server.
    public let engine: any Engine
    /// The tiers of the store, fastest first (for `/metrics` and `/health`).
    public let tiers: [any CacheTier]
    /// Request counters and histograms.
    public let metrics: ServerMetrics
    /// The model name reported in responses.
    public var modelName: String
    /// Largest `max_tokens` accepted.
    public var maxTokensLimit: Int
    /// `max_tokens` when the request gives none.
    public var defaultMaxTokens: Int
    /// Per-request limits.
    public let limits: ServerLimits
    /// Keys, tenants and the raw KV routes.
    public let security: ServerSecurity
    /// The bounded queue in front of the model.
    public let admission: Admission
    /// Where server faults are logged (their details never go to clients).
    public let logger: Logger

    public init(engine: any Engine, tiers: [any CacheTier], metrics: ServerMetrics,
                modelName: String, maxTokensLimit: Int = 4096, defaultMaxTokens: Int = 256,
                limits: ServerLimits = ServerLimits(), security: ServerSecurity = ServerSecurity(),
                logger: Logger = Logger(label: "kvtc.server")) {
        self.engine = engine
        self.tiers = tiers
        self.metrics = metrics
        self.modelName = modelName
        self.maxTokensLimit = maxTokensLimit
        self.defaultMaxTokens = defaultMaxTokens
        self.limits = limits
        self.security = security
        self.admission = Admission(concurrent: limits.maxConcurrent, queue: limits.maxQueue)
        self.logger = logger
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
