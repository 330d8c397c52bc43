import Foundation
import Hummingbird
import HummingbirdTesting
import KVTCBenchmarks
import KVTCRedis
import KVTCRedisTier
import KVTCStore
import KVTCTestSupport
import Testing
@testable import KVTCServer

/// Two kvtc servers on real sockets sharing a real three-master Redis Cluster. Part of the
/// serialized `ServerTests` suite, so that its two engines do not run beside the other
/// server tests' (whose HTTP test client gives each request 20 s on two shared cores).
extension ServerTests {
    typealias H = LoopbackHTTP

    static let geographyChat: [[String: String]] = [
        ["role": "system", "content": "You are a careful assistant who answers questions about geography in short sentences, naming rivers, seas and cities precisely."],
        ["role": "user", "content": "Which river flows through Paris, and into which sea does it finally flow? Name one other city on the same river."],
    ]

    /// A tier on `cluster` with a deadline generous enough for a loaded CI machine (the
    /// deadline's cost is the Redis tests' subject, not this one's).
    static func sharedTier(_ cluster: RedisClusterServers) throws -> RedisTier {
        RedisTier(client: try RedisClient(configuration: try RedisConfiguration(url: cluster.url, timeout: 2)),
                  options: RedisTierOptions(keyPrefix: "kvtc-test:"))
    }

    func chatReply(_ port: Int, _ messages: [[String: String]], maxTokens: Int = 4) throws -> H.Reply {
        try H.json(port: port, path: "/v1/chat/completions", key: nil,
                   object: ["messages": messages, "max_tokens": maxTokens, "temperature": 0] as [String: Any])
    }

    func tokenUsage(_ r: H.Reply) -> (prompt: Int, completion: Int, cached: Int) {
        let u = r.json?["usage"] as? [String: Any]
        return (u?["prompt_tokens"] as? Int ?? -1, u?["completion_tokens"] as? Int ?? -1,
                (u?["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int ?? -1)
    }

    @Test func aConversationContinuesOnAnotherServerAndSurvivesAKilledMaster() async throws {
        let model = try SharedModel.get()
        let cluster = try RedisClusterServers(masters: 3)
        let a = try F.service(model: model, redis: try Self.sharedTier(cluster))
        let b = try F.service(model: model, redis: try Self.sharedTier(cluster))
        try await F.app(a).test(.live) { clientA in
            try await F.app(b).test(.live) { clientB in
                let portA = try #require(clientA.port), portB = try #require(clientB.port)
                // Turn 1 on A.
                let first = try await onOwnThread { try self.chatReply(portA, Self.geographyChat) }
                #expect(first.status == 200)
                let reply = try #require(((first.json?["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String)
                let (prompt, completion, _) = tokenUsage(first)
                await a.store!.tier.flush()
                // Turn 2 on B, which never saw turn 1: the cache comes from the cluster.
                let next = Self.geographyChat + [["role": "assistant", "content": reply],
                                                ["role": "user", "content": "And which river flows through Rome?"]]
                let second = try await onOwnThread { try self.chatReply(portB, next) }
                #expect(second.status == 200)
                let held = prompt + completion - 1
                #expect(tokenUsage(second).cached == held, "B restored \(tokenUsage(second).cached) of the \(held) tokens A held")
                let metrics = try await onOwnThread { try H.exchange(port: portB, method: "GET", path: "/metrics").text }
                #expect(metric(metrics, "kvtc_tier_hits_total{tier=\"redis\"}") > 0)
                #expect(metric(metrics, "kvtc_tier_read_bytes_total{tier=\"redis\"}") > 0)
                let written = try await onOwnThread { try H.exchange(port: portA, method: "GET", path: "/metrics").text }
                #expect(metric(written, "kvtc_tier_writes_total{tier=\"redis\"}") > 0)
                #expect(metric(written, "kvtc_tier_written_bytes_total{tier=\"redis\"}") > 0)
                #expect(metrics.contains("kvtc_tier_round_trip_seconds_bucket{tier=\"redis\",le=\"0.001\"}"))

                // A master dies mid-run: two servers, four clients, every request answered.
                cluster.nodes[0].kill()
                let statuses = try await withThrowingTaskGroup(of: [Int].self) { group in
                    for c in 0..<4 {
                        group.addTask {
                            try await onOwnThread {
                                var out: [Int] = []
                                for turn in 0..<2 {
                                    let port = (c + turn) % 2 == 0 ? portA : portB
                                    let messages = Self.geographyChat + [["role": "assistant", "content": reply],
                                                                        ["role": "user", "content": "Client \(c), question \(turn): and Berlin?"]]
                                    out.append(try self.chatReply(port, messages, maxTokens: 2).status)
                                }
                                return out
                            }
                        }
                    }
                    var all: [Int] = []
                    for try await s in group { all += s }
                    return all
                }
                #expect(statuses.count == 8 && statuses.allSatisfy { $0 == 200 }, "\(statuses)")
                let after = try await onOwnThread { try H.exchange(port: portA, method: "GET", path: "/metrics").text }
                #expect(metric(after, "kvtc_http_errors_total{status=\"500\"}") == 0)
            }
        }
    }
}
