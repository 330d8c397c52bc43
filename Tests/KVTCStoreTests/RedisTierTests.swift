import Foundation
import KVTCRedis
@testable import KVTCRedisTier
import KVTCTestSupport
import Testing
@testable import KVTCStore

/// The Redis tier against real servers: a standalone node and a three-master cluster.
@Suite(.serialized) struct RedisTierTests {
    /// A tier for `url`; the default deadline is generous because CI runs these tests beside
    /// the model's on two busy cores.
    static func tier(_ url: String, timeout: Double = 5, prefix: String = "kvtc-test:") throws -> RedisTier {
        RedisTier(client: try RedisClient(configuration: try RedisConfiguration(url: url, timeout: timeout)),
                  options: RedisTierOptions(keyPrefix: prefix))
    }

    static func value(_ i: Int) -> [UInt8] { (0..<(500 + 97 * i)).map { UInt8(truncatingIfNeeded: $0 ^ i) } }

    @Test func writesInTheBackgroundAndReadsInBatches() async throws {
        let server = try RedisServer()
        let tier = try Self.tier("redis://127.0.0.1:\(server.port)")
        let keys = (0..<40).map { Fixtures.key($0) }
        for (i, k) in keys.enumerated() { try await tier.put(k, Self.value(i)) }
        await tier.flush()
        #expect(tier.queuedWrites == 0)
        let got = await tier.get(keys + [Fixtures.key(999)])
        for i in keys.indices {
            let same = got[i] == Self.value(i)
            #expect(same, "entry \(i) read back different")
        }
        #expect(got[40] == nil)
        #expect(try await tier.contains(keys + [Fixtures.key(999)]) == Array(repeating: true, count: 40) + [false])
        let s = await tier.stats()
        #expect(s.writes == 40 && s.hits == 40 && s.misses == 1 && s.errors == 0)
        #expect(s.bytesWritten == keys.indices.reduce(0) { $0 + Self.value($1).count } && s.bytesRead == s.bytesWritten)
        #expect((s.roundTrips?.count ?? 0) >= 3)
        try await tier.remove(keys[0])
        #expect(try await tier.get(keys[0]) == nil)
    }

    @Test func neverServesWhatFailsVerification() async throws {
        let server = try RedisServer()
        let tier = try Self.tier("redis://127.0.0.1:\(server.port)")
        let a = Fixtures.key(1), b = Fixtures.key(2), c = Fixtures.key(3), d = Fixtures.key(4)
        try await tier.put(a, Self.value(1))
        await tier.flush()
        let client = tier.client
        // b: a's sealed bytes copied under b's name; c: flipped byte; d: a list, not a string.
        let sealed = try #require(try await client.execute(.get(tier.redisKey(a))).get().bytes)
        var flipped = SealedEntry.encode(key: c, value: Self.value(3))
        flipped[flipped.count - 5] ^= 0x40
        _ = await client.execute([.set(tier.redisKey(b), sealed), .set(tier.redisKey(c), flipped),
                                  RedisCommand("RPUSH", [tier.redisKey(d), [1, 2, 3]])])
        let got = await tier.get([a, b, c, d])
        let genuine = got[0] == Self.value(1)
        #expect(genuine)
        #expect(got[1] == nil && got[2] == nil && got[3] == nil)
        #expect(await tier.stats().corruptDropped == 3)
        // Dropped entries are deleted, not left for the next reader.
        let exists = await client.execute([b, c, d].map { .exists(tier.redisKey($0)) })
        #expect(try exists.map { try $0.get() } == [.integer(0), .integer(0), .integer(0)])
    }

    @Test func withASecretOnlyItsHoldersCanPlantEntries() async throws {
        let server = try RedisServer()
        let url = "redis://127.0.0.1:\(server.port)"
        let client = try RedisClient(configuration: try RedisConfiguration(url: url, timeout: 5))
        let secret = EntrySigner(secret: Array(repeating: 7, count: 32))
        let signed = RedisTier(client: client, options: RedisTierOptions(keyPrefix: "kvtc-test:"), signer: secret)
        let forger = try Self.tier(url)
        let stranger = RedisTier(client: client, options: RedisTierOptions(keyPrefix: "kvtc-test:"),
                                 signer: EntrySigner(secret: Array(repeating: 8, count: 32)))
        let a = Fixtures.key(1), b = Fixtures.key(2), c = Fixtures.key(3)
        try await signed.put(a, Self.value(1))
        try await forger.put(b, Self.value(2))       // well sealed, but unsigned
        try await stranger.put(c, Self.value(3))     // signed with another secret
        for t in [signed, forger, stranger] { await t.flush() }
        let got = await signed.get([a, b, c])
        let genuine = got[0] == Self.value(1)
        #expect(genuine && got[1] == nil && got[2] == nil)
        #expect(await signed.stats().corruptDropped == 2)
        // What a signing server wrote carries 32 more bytes than the sealed entry.
        let stored = try #require(try await client.execute(.get(signed.redisKey(a))).get().bytes)
        #expect(stored.count == SealedEntry.headerSize + Self.value(1).count + 32)
    }

    @Test func twoStoresShareAClusterAndAnUnreachableOneOnlyMisses() async throws {
        let cluster = try RedisClusterServers(masters: 3)
        let tierA = try Self.tier(cluster.url), tierB = try Self.tier(cluster.url)
        let memoryB = MemoryTier(budget: 1 << 24)
        let storeA = Fixtures.store(tier: TieredStore([MemoryTier(budget: 1 << 24), tierA]))
        let storeB = Fixtures.store(tier: TieredStore([memoryB, tierB]))
        let tokens = Fixtures.tokens(200, seed: 7)
        let cache = Fixtures.cache(tokens: 200, seed: 7)
        let alice = StoreNamespace(tenant: "alice")
        _ = try await storeA.store(tokens: tokens, cache: cache, namespace: alice)
        await storeA.tier.flush()
        let mine = try #require(await storeA.restore(tokens: tokens, namespace: alice))
        // B has never seen the conversation: it restores it from the cluster, the same cache.
        let theirs = try #require(await storeB.restore(tokens: tokens, namespace: alice))
        #expect(theirs.matchedTokens == 200)
        #expect(theirs.cache.keys == mine.cache.keys && theirs.cache.values == mine.cache.values)
        let read = await tierB.stats()
        #expect(read.hits == 7 && read.bytesRead > 0)
        // ... and promoted it into its memory: a second restore does not go to Redis.
        #expect(await memoryB.stats().entries == 7)
        _ = try #require(await storeB.restore(tokens: tokens, namespace: alice))
        #expect(await tierB.stats().hits == 7)
        // Another tenant does not see it, in Redis or anywhere.
        #expect(await storeB.restore(tokens: tokens, namespace: StoreNamespace(tenant: "bob")) == nil)

        // A deployment that is down: storing still works (memory), restoring misses fast.
        let dead = try Self.tier("redis://127.0.0.1:\(RedisServer.freePort())", timeout: 0.05)
        let storeC = Fixtures.store(tier: TieredStore([MemoryTier(budget: 1 << 24), dead]))
        let clock = Date()
        #expect(await storeC.restore(tokens: tokens, namespace: alice) == nil)
        // Refused connections fail at once; the bound leaves room for a busy CI machine.
        #expect(Date().timeIntervalSince(clock) < 10)
        _ = try await storeC.store(tokens: tokens, cache: cache, namespace: alice)
        await storeC.tier.flush()
        #expect(await storeC.restore(tokens: tokens, namespace: alice)?.matchedTokens == 200)
        #expect(await dead.stats().errors > 0)
    }
}

