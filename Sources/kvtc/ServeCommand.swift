import ArgumentParser
import Foundation
import KVTCCodec
import KVTCLlamaServer
import KVTCModels
import KVTCRedis
import KVTCRedisTier
import KVTCRuntime
import KVTCServer
import KVTCStore
import Logging

/// A byte count given as an integer with an optional unit: `1048576`, `512M`, `2GiB`, `1.5G`.
struct ByteCount: ExpressibleByArgument, Sendable, CustomStringConvertible {
    var bytes: Int

    init(bytes: Int) { self.bytes = bytes }

    init?(argument: String) {
        let s = argument.trimmingCharacters(in: .whitespaces).uppercased()
        let kib = 1024.0
        let units: [(String, Double)] = [("TIB", kib * kib * kib * kib), ("GIB", kib * kib * kib), ("MIB", kib * kib), ("KIB", kib),
                                         ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3),
                                         ("T", kib * kib * kib * kib), ("G", kib * kib * kib), ("M", kib * kib), ("K", kib), ("B", 1)]
        var number = s, scale = 1.0
        for (u, f) in units where s.hasSuffix(u) {
            number = String(s.dropLast(u.count)).trimmingCharacters(in: .whitespaces)
            scale = f
            break
        }
        guard let v = Double(number), v >= 0, v.isFinite else { return nil }
        bytes = Int(v * scale)
    }

    var description: String { String(format: "%.1f MiB", Double(bytes) / 1048576) }
}

/// Options that build the compressed cache store (shared by `serve`, `chat` and `bench serve`).
struct StoreCommandOptions: ParsableArguments {
    @Option(name: .long, help: "Byte budget of the in-memory tier (e.g. 512M, 2G).")
    var memoryBudget = ByteCount(bytes: 1 << 30)

    @Option(name: .long, help: "Directory of the disk tier (none: memory only).")
    var disk: String?

    @Option(name: .long, help: "Byte quota of the disk tier.")
    var diskQuota = ByteCount(bytes: 8 << 30)

    @Option(name: .long, help: "KVTC profile file (default: the model's default profile, built once and cached).")
    var profile: String?

    @Option(name: .long, help: "Nominal compression ratio of stored chunks (a ratio of the profile).")
    var ratio: Double = 16

    @Option(name: .long, help: "Tokens per stored chunk.")
    var chunkTokens = 256

    @Flag(name: .long, help: "fsync every disk-tier file and its directory (durable across power loss; each write waits for the disk).")
    var diskDurable = false

    @Option(name: .long, help: "How chunks are stored: kvtc (compressed) or exact (f32, bit-identical restores; a reference).")
    var cacheCodec: StoreCodec = .kvtc

    @Option(name: .long, help: "A shared Redis tier below memory and disk: redis[s]://[user:password@]host:port[,host:port...] (cluster seeds or one standalone node; rediss: TLS).")
    var redis: String?

    @Option(name: .long, help: "Certificate authorities (PEM) trusted for rediss:// (default: the system's).")
    var redisCA: String?

    @Option(name: .long, help: "Expiry of entries written to Redis, in seconds (default: none; let Redis's maxmemory policy evict).")
    var redisTTL: Double?

    @Option(name: .long, help: "Milliseconds a Redis read may take (connecting included) before it counts as a miss.")
    var redisTimeoutMs = RedisConfiguration.defaultTimeout * 1000

    @Option(name: .long, help: "Prefix of the Redis keys this server reads and writes.")
    var redisPrefix = "kvtc:"

    @Option(name: .long, help: "Secret file (>= 32 bytes) shared by the servers on the Redis deployment: values are authenticated with HMAC-SHA256, so writers without it cannot plant entries.")
    var redisSecret: String?

    func validateRedis() throws {
        if let redisTTL { guard redisTTL > 0 else { throw ValidationError("--redis-ttl must be positive") } }
        guard redisTimeoutMs > 0 else { throw ValidationError("--redis-timeout-ms must be positive") }
    }

    /// The Redis tier `--redis` asks for, its topology found (or its absence reported).
    func makeRedisTier() async throws -> RedisTier? {
        guard let redis else { return nil }
        try validateRedis()
        let signer = try redisSecret.map { try EntrySigner(contentsOf: $0) }
        let (tier, status) = try await StoreFactory.redisTier(
            url: redis, options: RedisTierOptions(keyPrefix: redisPrefix, ttl: redisTTL), signer: signer,
            timeout: redisTimeoutMs / 1000, tlsCAFile: redisCA)
        warn("kvtc: \(status)")
        return tier
    }

    /// The runtime's options for these flags.
    var storeOptions: StoreOptions {
        var o = StoreOptions()
        o.memoryBudget = memoryBudget.bytes
        o.diskDirectory = disk
        o.diskQuota = diskQuota.bytes
        o.profilePath = profile
        o.ratio = ratio
        o.chunkTokens = chunkTokens
        o.diskDurable = diskDurable
        o.codec = cacheCodec
        return o
    }

    /// Tiers and a KVTC store for `model` (building its default profile if needed).
    func makeStore(model: any LanguageModel) async throws -> (CacheStore, [any CacheTier]) {
        var options = storeOptions
        options.redis = try await makeRedisTier()
        defer { Progress.shared.done() }
        return try StoreFactory.store(options, model: model) { Progress.shared.status($0) }
    }
}

/// `kvtc serve`: the OpenAI-compatible server with the compressed cache store.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the model over an OpenAI-compatible HTTP API, restoring KV caches from a compressed store.",
        discussion: """
        Routes: POST /v1/chat/completions, POST /v1/completions (both with "stream"), GET /v1/models, \
        GET /health, GET /metrics; with --kv-api: POST /v1/kv/lookup, GET/PUT /v1/kv/{key}.

        With --api-key-file every route but /health needs 'Authorization: Bearer KEY', and each \
        key's tenant salts every store key (tenants never share or see each other's entries). \
        Without keys the server listens on loopback only unless --insecure.
        """)

    @OptionGroup var modelOptions: ModelCommandOptions
    @OptionGroup var storeOptions: StoreCommandOptions

    @Option(name: .long, help: "Interface to listen on.")
    var host = "127.0.0.1"

    @Option(name: .long, help: "TCP port.")
    var port = 8080

    @Option(name: .long, help: "Largest max_tokens a request may ask for.")
    var maxTokensLimit = 2048

    @Option(name: .long, help: "API keys: one 'KEY TENANT [admin]' per line ('#' comments).")
    var apiKeyFile: String?

    @Flag(name: .long, help: "Serve /metrics without a key.")
    var publicMetrics = false

    @Flag(name: .long, help: "Enable the raw KV routes (/v1/kv/...); they need an admin key.")
    var kvAPI = false

    @Option(name: .long, help: "Shared secret file (>= 32 bytes): sign exported entries, accept only signed uploads.")
    var kvSecret: String?

    @Flag(name: .long, help: "Allow listening on a non-loopback interface without --api-key-file.")
    var insecure = false

    @Option(name: .long, help: "Generation requests that run at once.")
    var maxConcurrent = 4

    @Option(name: .long, help: "Generation requests that may wait for a slot (more get 429).")
    var maxQueue = 64

    @Option(name: .long, help: "Seconds a generation request may take, waiting included.")
    var requestTimeout = 300.0

    @Option(name: .long, help: "Seconds before an idle or stalled connection is closed.")
    var idleTimeout = 30.0

    @Option(name: .long, help: "Largest JSON request body.")
    var maxBodyBytes = ByteCount(bytes: 1 << 20)

    @Option(name: .long, help: "Largest prompt text (checked before tokenizing).")
    var maxPromptBytes = ByteCount(bytes: 256 << 10)

    @Option(name: .long, help: "What runs the model: local (kvtc's own forward pass) or llama-server (one or more llama-server processes given by --upstream).")
    var engine: EngineKind = .local

    @Option(name: .long, help: "llama-server URLs for --engine llama-server, comma-separated (each started with --slot-save-path and -np N).")
    var upstream: String?

    @Option(name: .long, help: "The --slot-save-path of the llama-servers: one directory for all, or one per --upstream URL, comma-separated.")
    var slotDir: String?

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535") }
        guard storeOptions.chunkTokens > 4 else { throw ValidationError("--chunk-tokens must be larger than 4") }
        guard maxConcurrent >= 1, maxQueue >= 0 else { throw ValidationError("--max-concurrent must be >= 1 and --max-queue >= 0") }
        guard requestTimeout > 0, idleTimeout > 0 else { throw ValidationError("--request-timeout and --idle-timeout must be positive") }
        if apiKeyFile == nil && !insecure && !Self.isLoopback(host) {
            throw ValidationError("--host \(host) is not a loopback interface: give --api-key-file (or --insecure to serve everyone as one tenant)")
        }
        if kvAPI && apiKeyFile == nil { throw ValidationError("--kv-api needs --api-key-file with an admin key") }
        if engine == .llamaServer {
            _ = try llamaServerBackends()
        } else if upstream != nil || slotDir != nil {
            throw ValidationError("--upstream and --slot-dir need --engine llama-server")
        }
    }

    /// The llama-servers `--upstream` and `--slot-dir` name.
    func llamaServerBackends() throws -> [LlamaServerBackend] {
        let urls = (upstream ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let dirs = (slotDir ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !urls.isEmpty else { throw ValidationError("--engine llama-server needs --upstream URL[,URL...]") }
        guard dirs.count == 1 || dirs.count == urls.count else {
            throw ValidationError("--slot-dir takes one directory, or one per --upstream URL (\(urls.count))")
        }
        for u in urls where !(u.hasPrefix("http://") || u.hasPrefix("https://")) {
            throw ValidationError("--upstream \(u) is not an http:// or https:// URL")
        }
        return urls.enumerated().map { i, u in
            LlamaServerBackend(url: u, slotDirectory: URL(fileURLWithPath: dirs.count == 1 ? dirs[0] : dirs[i]))
        }
    }

    /// Whether `host` names the loopback interface.
    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// The security settings the flags ask for (reading the key and secret files).
    func security() throws -> ServerSecurity {
        var security = ServerSecurity(publicMetrics: publicMetrics, kvAPI: kvAPI)
        if let apiKeyFile {
            let keys = try APIKeys(contentsOf: apiKeyFile)
            if kvAPI && !keys.hasAdmin { throw ValidationError("--kv-api needs an admin key in \(apiKeyFile)") }
            security.keys = keys
        }
        if let kvSecret { security.signer = try EntrySigner(contentsOf: kvSecret) }
        return security
    }

    func run() async throws {
        let security = try security()
        let model = try modelOptions.load()
        let (store, tiers) = try await storeOptions.makeStore(model: model)
        let metrics = ServerMetrics()
        // Responses name the model as the user named it (a catalog name, or the GGUF file's name).
        let name = modelOptions.model.map { URL(fileURLWithPath: $0).lastPathComponent } ?? ModelRegistry.defaultModelName
        let engine: any Engine
        switch self.engine {
        case .local:
            engine = LocalEngine(model: model, store: store, name: name, observer: { metrics.record($0) })
        case .llamaServer:
            let backends = try llamaServerBackends()
            Progress.shared.status("checking \(backends.count) llama-server backend(s)")
            let upstream = try await LlamaServerEngine.connect(backends: backends, model: model, store: store, name: name,
                                                               observer: { metrics.record($0) })
            Progress.shared.done()
            let layouts = upstream.slotLayouts.compactMap { $0?.description }
            warn("kvtc: in front of \(backends.map(\.url).joined(separator: ", ")) (slot files: \(layouts.first ?? "unknown"))")
            engine = upstream
        }
        let limits = ServerLimits(maxBodyBytes: maxBodyBytes.bytes, maxPromptBytes: maxPromptBytes.bytes,
                                  maxConcurrent: maxConcurrent, maxQueue: maxQueue, requestTimeout: requestTimeout,
                                  idleTimeout: idleTimeout)
        var logger = Logger(label: "kvtc.server")
        logger.logLevel = .warning
        let service = KVTCService(engine: engine, tiers: tiers, metrics: metrics, modelName: name,
                                  maxTokensLimit: maxTokensLimit, limits: limits, security: security, logger: logger)
        let app = KVTCServer.application(service: service, configuration: ServerConfiguration(host: host, port: port),
                                         logger: logger) { port in
            warn("kvtc: serving \(model.identity.prefix(12)) on http://\(host):\(port) (store: \(store.chain.identity))")
        }
        try await app.runService()
        // Shut down: slot saves still being stored, and entries queued for a Redis tier, are
        // written before the process exits.
        await (engine as? LlamaServerEngine)?.flush()
        await store.tier.flush()
    }
}

extension StoreCodec: ExpressibleByArgument {}

/// What runs the model behind `kvtc serve`.
enum EngineKind: String, ExpressibleByArgument, CaseIterable {
    case local
    case llamaServer = "llama-server"
}
