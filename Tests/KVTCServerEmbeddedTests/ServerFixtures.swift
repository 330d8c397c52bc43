import Foundation
import Hummingbird
import HummingbirdTesting
import KVTCEmbeddedModel
import KVTCModels
import KVTCRedisTier
import KVTCRuntime
import KVTCStore
@testable import KVTCServer

/// The embedded model (loaded once per test process; a failure fails the tests).
enum SharedModel {
    static func get() throws -> any LanguageModel { try EmbeddedModel.get() }
}

enum ServerFixtures {
    /// A service over a fresh memory tier (plus a disk tier when `disk` is given, and a
    /// shared Redis tier when `redis` is) storing exact f32 chunks, so that restored caches
    /// are bit-exact.
    static func service(model: any LanguageModel, chunkTokens: Int = 64, disk: URL? = nil, redis: RedisTier? = nil,
                        security: ServerSecurity = ServerSecurity(), limits: ServerLimits = ServerLimits(),
                        maxTokensLimit: Int = 64) throws -> KVTCService {
        var tiers: [any CacheTier] = [MemoryTier(budget: 1 << 30)]
        if let disk { tiers.append(try DiskTier(directory: disk, quota: 1 << 30)) }
        if let redis { tiers.append(redis) }
        let store = try CacheStore(identity: ProducerIdentity(modelHash: model.identity, profileHash: "", codecFormatVersion: 1, codec: "exact f32"),
                                   codec: ExactCompressor(precision: .fp32),
                                   tier: tiers.count == 1 ? tiers[0] : TieredStore(tiers),
                                   configuration: StoreConfiguration(chunkTokens: chunkTokens, recentTokens: 16),
                                   shape: CacheShape(geometry: model.geometry, rope: model.rope))
        let metrics = ServerMetrics()
        let engine = LocalEngine(model: model, store: store, observer: { metrics.record($0) })
        return KVTCService(engine: engine, tiers: tiers, metrics: metrics, modelName: "smollm2-135m",
                           maxTokensLimit: maxTokensLimit, defaultMaxTokens: 8, limits: limits, security: security)
    }

    /// Keys of two tenants and an admin.
    static let aliceKey = "alice-key-0123456789", bobKey = "bob-key-0123456789abc", adminKey = "admin-key-0123456789"
    static let keys = APIKeys([(aliceKey, Principal(tenant: "alice", isAdmin: false)),
                               (bobKey, Principal(tenant: "bob", isAdmin: false)),
                               (adminKey, Principal(tenant: "ops", isAdmin: true))])

    /// JSON headers with a bearer key.
    static func headers(_ key: String?) -> HTTPFields {
        var h = jsonHeaders
        if let key { h[.authorization] = "Bearer \(key)" }
        return h
    }

    static func app(_ service: KVTCService) -> some ApplicationProtocol {
        KVTCServer.application(service: service, configuration: ServerConfiguration(host: "127.0.0.1", port: 0))
    }

    static func json(_ object: Any) -> ByteBuffer {
        ByteBuffer(bytes: try! JSONSerialization.data(withJSONObject: object))
    }

    static func decode<T: Decodable>(_ type: T.Type, _ buffer: ByteBuffer) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
    }

    static let jsonHeaders: HTTPFields = [.contentType: "application/json"]

    /// The `data:` payloads of a server-sent event stream.
    static func events(_ buffer: ByteBuffer) -> [String] {
        String(buffer: buffer).components(separatedBy: "\n\n").compactMap { block in
            block.hasPrefix("data: ") ? String(block.dropFirst(6)) : nil
        }
    }
}
