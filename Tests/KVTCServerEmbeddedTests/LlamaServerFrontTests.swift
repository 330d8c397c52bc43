import Foundation
import Hummingbird
import HummingbirdTesting
import KVTCBenchmarks
import KVTCLlamaServer
import KVTCModels
import KVTCRedis
import KVTCRedisTier
import KVTCRuntime
import KVTCStore
import KVTCTestSupport
import Testing
@testable import KVTCServer

/// kvtc's HTTP server in front of real llama-server processes, on real sockets.
extension ServerTests {
    /// A service whose engine fronts `server`, over a memory tier and an optional shared
    /// Redis tier, storing exact f32 chunks.
    static func llamaServerService(model: any LanguageModel, server: LlamaServerProcess, redis: RedisTier?) async throws -> (KVTCService, LlamaServerEngine) {
        var tiers: [any CacheTier] = [MemoryTier(budget: 1 << 30)]
        if let redis { tiers.append(redis) }
        let store = try CacheStore(identity: ProducerIdentity(modelHash: model.identity, profileHash: "", codecFormatVersion: 1, codec: "exact f32"),
                                   codec: ExactCompressor(precision: .fp32), tier: tiers.count == 1 ? tiers[0] : TieredStore(tiers),
                                   configuration: StoreConfiguration(chunkTokens: 64, recentTokens: 16),
                                   shape: CacheShape(geometry: model.geometry, rope: model.rope))
        let metrics = ServerMetrics()
        let engine = try await LlamaServerEngine.connect(
            backends: [LlamaServerBackend(url: server.url, slotDirectory: server.slotDirectory)], model: model, store: store,
            name: "smollm2-135m", observer: { metrics.record($0) })
        return (KVTCService(engine: engine, tiers: tiers, metrics: metrics, modelName: "smollm2-135m", maxTokensLimit: 64,
                            defaultMaxTokens: 8), engine)
    }

    /// Two kvtc fronts, each over its own llama-server, sharing one Redis Cluster: a
    /// conversation started on one continues on the other with its prefix restored from the
    /// cluster into the other llama-server, streamed back with its cached tokens counted.
    @Test func twoFrontsOverTwoLlamaServersContinueEachOthersConversations() async throws {
        let model = try SharedModel.get()
        let cluster = try RedisClusterServers(masters: 3)
        let servers = try (0..<2).map { _ in try LlamaServerProcess(model: model.path, slots: 1, slotContext: 2048) }
        let (a, engineA) = try await Self.llamaServerService(model: model, server: servers[0], redis: try Self.sharedTier(cluster))
        let (b, engineB) = try await Self.llamaServerService(model: model, server: servers[1], redis: try Self.sharedTier(cluster))
        try await F.app(a).test(.live) { clientA in
            try await F.app(b).test(.live) { clientB in
                let portA = try #require(clientA.port), portB = try #require(clientB.port)
                let first = try await onOwnThread { try self.chatReply(portA, Self.geographyChat, maxTokens: 12) }
                #expect(first.status == 200, "\(first.text)")
                let reply = try #require(((first.json?["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String)
                await engineA.flush()
                await a.store!.tier.flush()
                let next = Self.geographyChat + [["role": "assistant", "content": reply],
                                                ["role": "user", "content": "And which river flows through Rome?"]]
                let stream = try await onOwnThread {
                    try H.json(port: portB, path: "/v1/chat/completions", key: nil,
                               object: ["messages": next, "max_tokens": 8, "temperature": 0, "stream": true,
                                        "stream_options": ["include_usage": true]] as [String: Any])
                }
                #expect(stream.status == 200)
                let events = stream.text.components(separatedBy: "\n\n").filter { $0.hasPrefix("data: ") }.map { String($0.dropFirst(6)) }
                #expect(events.last == "[DONE]")
                let usage = events.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                    .compactMap { $0["usage"] as? [String: Any] }.last
                let cached = (usage?["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int ?? -1
                #expect(cached >= 64, "front B restored \(cached) tokens from the cluster: \(stream.text)")
                #expect(engineB.counters.upstreamRestores == 1)
                let metrics = try await onOwnThread { try H.exchange(port: portB, method: "GET", path: "/metrics") }
                #expect(metrics.text.contains("kvtc_upstream_restores_total 1"))
                await engineB.flush()
            }
        }
    }
}
