import ArgumentParser
import Foundation
import KVTCCodec
import KVTCModels
import KVTCRuntime
import KVTCServer
import KVTCStore

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

    /// The runtime's options for these flags.
    var storeOptions: StoreOptions {
        var o = StoreOptions()
        o.memoryBudget = memoryBudget.bytes
        o.diskDirectory = disk
        o.diskQuota = diskQuota.bytes
        o.profilePath = profile
        o.ratio = ratio
        o.chunkTokens = chunkTokens
        return o
    }

    /// Tiers and a KVTC store for `model` (building its default profile if needed).
    func makeStore(model: any LanguageModel) throws -> (CacheStore, [any CacheTier]) {
        defer { Progress.shared.done() }
        return try StoreFactory.store(storeOptions, model: model) { Progress.shared.status($0) }
    }
}

/// `kvtc serve`: the OpenAI-compatible server with the compressed cache store.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the model over an OpenAI-compatible HTTP API, restoring KV caches from a compressed store.",
        discussion: """
        Routes: POST /v1/chat/completions, POST /v1/completions (both with "stream"), \
        POST /v1/kv/lookup, GET/PUT /v1/kv/{key}, GET /health, GET /metrics.
        """)

    @OptionGroup var modelOptions: ModelCommandOptions
    @OptionGroup var storeOptions: StoreCommandOptions

    @Option(name: .long, help: "Interface to listen on.")
    var host = "127.0.0.1"

    @Option(name: .long, help: "TCP port.")
    var port = 8080

    @Option(name: .long, help: "Largest max_tokens a request may ask for.")
    var maxTokensLimit = 2048

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535") }
        guard storeOptions.chunkTokens > 4 else { throw ValidationError("--chunk-tokens must be larger than 4") }
    }

    func run() async throws {
        let model = try modelOptions.load()
        let (store, tiers) = try storeOptions.makeStore(model: model)
        let metrics = ServerMetrics()
        let engine = InferenceEngine(model: model, store: store, observer: { metrics.record($0) })
        // Responses name the model as the user named it (a catalog name, or the GGUF file's name).
        let name = modelOptions.model.map { URL(fileURLWithPath: $0).lastPathComponent } ?? ModelRegistry.defaultModelName
        let service = KVTCService(engine: engine, tiers: tiers, metrics: metrics, modelName: name,
                                  maxTokensLimit: maxTokensLimit)
        let app = KVTCServer.application(service: service, configuration: ServerConfiguration(host: host, port: port)) { port in
            warn("kvtc: serving \(model.identity.prefix(12)) on http://\(host):\(port) (store: \(store.chain.identity))")
        }
        try await app.runService()
    }
}
