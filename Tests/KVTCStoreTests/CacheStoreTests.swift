import KVTCNumerics
import Foundation
import Testing
import KVTCTestSupport
import KVTCCache
import KVTCCodec
@testable import KVTCStore

@Suite struct CacheStoreTests {
    @Test func restoredCacheMatchesTheCodecAlone() async throws {
        let store = Fixtures.store(tier: MemoryTier(budget: 1 << 24))
        for count in [20, 32, 40, 64, 100, 127] {
            let tokens = Fixtures.tokens(count, seed: count)
            let cache = Fixtures.cache(tokens: count, seed: UInt64(count))
            let receipt = try await store.store(tokens: tokens, cache: cache)
            #expect(receipt.chunksWritten == count / 32)
            let restored = try #require(await store.restore(tokens: tokens, reservingCapacity: count + 50))
            #expect(restored.matchedTokens == count)
            #expect(restored.cache.positions == Array(0..<count))
            #expect(restored.cache.keys.capacity >= (count + 50) * Fixtures.geometry.featuresPerToken)
            // The most recent 16 tokens and every token after the last full chunk are exact.
            let exactFrom = min((count / 32) * 32, count - 16)
            let p = Fixtures.geometry.featuresPerToken
            #expect(Array(restored.cache.keys[(exactFrom * p)...]) == Array(cache.keys[(exactFrom * p)...]))
            #expect(Array(restored.cache.values[(exactFrom * p)...]) == Array(cache.values[(exactFrom * p)...]))
            if count > 20 {
                // Same as compressing the whole cache with 4 sinks and `count - exactFrom` recent tokens.
                let alone = Fixtures.codecAlone(cache, recent: count - exactFrom)
                #expect(Fixtures.maxDifference(restored.cache.keys, alone.keys) < 1e-4)
                #expect(Fixtures.maxDifference(restored.cache.values, alone.values) < 1e-4)
            }
        }
    }

    @Test func looksUpTheLongestStoredPrefix() async throws {
        let store = Fixtures.store(tier: MemoryTier(budget: 1 << 24))
        let tokens = Fixtures.tokens(200, seed: 1)
        let cache = Fixtures.cache(tokens: 200, seed: 1)
        _ = try await store.store(tokens: Array(tokens[0..<70]), cache: try cache.tokens(0..<70))
        _ = try await store.store(tokens: Array(tokens[0..<150]), cache: try cache.tokens(0..<150))
        // Extending a stored prefix finds it.
        #expect(await store.lookup(tokens: tokens)?.matchedTokens == 150)
        #expect(await store.lookup(tokens: tokens)?.tailKey != nil)
        // Without a matching tail, whole chunks minus the 16 recent tokens (recomputed by the caller).
        let partial = await store.lookup(tokens: Array(tokens[0..<149]))
        #expect(partial?.matchedTokens == 4 * 32 - 16 && partial?.tailKey == nil)
        #expect(await store.lookup(tokens: Array(tokens[0..<69]))?.matchedTokens == 2 * 32 - 16)
        #expect(await store.lookup(tokens: Array(tokens[0..<40]))?.matchedTokens == 32 - 16)
        #expect(await store.lookup(tokens: Array(tokens[0..<31])) == nil)
        // Diverging after token 100: chunks 0-2 still match (80 tokens) and beat the 70-token tail.
        var other = tokens
        other[100] += 1
        #expect(await store.lookup(tokens: other)?.matchedTokens == 80)
        other = tokens
        other[75] += 1
        #expect(await store.lookup(tokens: other)?.matchedTokens == 70, "the 70-token tail beats 2 chunks minus 16")
        let chunkOnly = try #require(await store.restore(tokens: Array(tokens[0..<149])))
        #expect(!chunkOnly.usedTail && chunkOnly.cache.tokenCount == 112)
        let full = try #require(await store.restore(tokens: Array(tokens[0..<150])))
        #expect(full.usedTail)
        #expect(Fixtures.sameDecoding(chunkOnly.cache, try full.cache.tokens(0..<112)))
        let strict = Fixtures.store(tier: store.tier, configuration: StoreConfiguration(chunkTokens: 32, recentTokens: 16, chunkOnlyMatches: false))
        #expect(await strict.lookup(tokens: Array(tokens[0..<149]))?.matchedTokens == 70)
        // Diverging at token 0 finds nothing.
        other = tokens
        other[0] += 1
        #expect(await store.restore(tokens: other) == nil)
        // Restoring a longer request returns only the stored prefix, whose chunks were reused.
        let restored = try #require(await store.restore(tokens: tokens + [5, 6]))
        #expect(restored.matchedTokens == 150 && restored.cache.tokenCount == 150)
        let receipt = try await store.store(tokens: tokens, cache: cache)
        #expect(receipt.chunksReused == 4 && receipt.chunksWritten == 2)
    }

    @Test func aTailNeedsOnlyTheChunksBeforeItsFirstToken() async throws {
        let tier = MemoryTier(budget: 1 << 24)
        let store = Fixtures.store(tier: tier)
        let tokens = Fixtures.tokens(70, seed: 9)
        _ = try await store.store(tokens: tokens, cache: Fixtures.cache(tokens: 70, seed: 9))
        // 70 tokens: chunks [0,32) and [32,64), tail from 54 (the 16 most recent) to 70.
        let keys = store.chain.chunkKeys(for: tokens)
        let match = try #require(await store.lookup(tokens: tokens))
        #expect(match.chunkKeys == keys && match.matchedTokens == 70)
        // With chunk-only matches off, a 38-token prefix's tail (from 22) needs chunk 0 only.
        let strict = Fixtures.store(tier: tier, configuration: StoreConfiguration(chunkTokens: 32, recentTokens: 16, chunkOnlyMatches: false))
        _ = try await strict.store(tokens: Array(tokens[0..<38]), cache: try Fixtures.cache(tokens: 70, seed: 9).tokens(0..<38))
        try await tier.remove(keys[1])
        let m38 = try #require(await strict.lookup(tokens: tokens))
        #expect(m38.matchedTokens == 38 && m38.chunkKeys == [keys[0]])
        #expect(await strict.restore(tokens: tokens)?.matchedTokens == 38)
    }

    @Test func anotherProducerNeverSeesTheEntries() async throws {
        let tier = MemoryTier(budget: 1 << 24)
        let store = Fixtures.store(tier: tier)
        let tokens = Fixtures.tokens(100, seed: 2)
        _ = try await store.store(tokens: tokens, cache: Fixtures.cache(tokens: 100, seed: 2))
        var other = Fixtures.identity
        other.modelHash = String(repeating: "cd", count: 32)
        #expect(await Fixtures.store(tier: tier, identity: other).restore(tokens: tokens) == nil)
        other = Fixtures.identity
        other.codecFormatVersion += 1
        #expect(await Fixtures.store(tier: tier, identity: other).restore(tokens: tokens) == nil)
        #expect(await store.restore(tokens: tokens)?.matchedTokens == 100)
    }

    @Test func rejectsMismatchedInput() async throws {
        let store = Fixtures.store(tier: MemoryTier(budget: 1 << 24))
        let cache = Fixtures.cache(tokens: 40, seed: 3)
        await #expect(throws: StoreError.self) { try await store.store(tokens: Fixtures.tokens(39, seed: 3), cache: cache) }
        await #expect(throws: StoreError.invalidToken(-1)) {
            try await store.store(tokens: [-1] + Fixtures.tokens(39, seed: 3), cache: cache)
        }
        var shifted = try Fixtures.cache(tokens: 41, seed: 3).tokens(1..<41)
        shifted.model = "x"
        await #expect(throws: StoreError.self) { try await store.store(tokens: Fixtures.tokens(40, seed: 3), cache: shifted) }
    }

    @Test func codecFailuresCarryTheCodecsOwnError() async throws {
        let store = Fixtures.store(tier: MemoryTier(budget: 1 << 24))
        let cache = Fixtures.cache(tokens: 40, seed: 3)
        var keys = cache.keys
        keys[5] = .nan
        let bad = try KVCache(geometry: cache.geometry, rope: cache.rope, positions: cache.positions,
                              keys: keys, values: cache.values, model: cache.model)
        do {
            _ = try await store.store(tokens: Fixtures.tokens(40, seed: 3), cache: bad)
            Issue.record("a cache holding NaN was stored")
        } catch {
            guard case .codec(.kvtc(.cache(.nonFinite))) = error else { Issue.record("unexpected error \(error)"); return }
            #expect(error.description.hasPrefix("chunk codec failed: "))
        }
    }

    @Test func rawEntriesAreVerifiedOnUpload() async throws {
        let source = Fixtures.store(tier: MemoryTier(budget: 1 << 24))
        let tokens = Fixtures.tokens(80, seed: 4)
        let receipt = try await source.store(tokens: tokens, cache: Fixtures.cache(tokens: 80, seed: 4))
        let keys = source.chain.chunkKeys(for: tokens) + [receipt.tailKey]
        let target = Fixtures.store(tier: MemoryTier(budget: 1 << 24))
        for k in keys {
            let bytes = try #require(await source.rawEntry(k))
            // Under the wrong key, or altered, it is refused.
            await #expect(throws: StoreError.self) { try await target.putRawEntry(keys[0] == k ? keys[1] : keys[0], bytes) }
            var altered = bytes
            altered[altered.count - 3] ^= 1
            if k != receipt.tailKey {
                await #expect(throws: StoreError.self) { try await target.putRawEntry(k, altered) }
            }
            try await target.putRawEntry(k, bytes)
        }
        let restored = try #require(await target.restore(tokens: tokens))
        #expect(restored.matchedTokens == 80)
        #expect(Fixtures.sameDecoding(restored.cache, (await source.restore(tokens: tokens))!.cache))
    }

    @Test func fp16ExactStoreRoundTrips() async throws {
        let store = try CacheStore(identity: ProducerIdentity(modelHash: "m", profileHash: "", codecFormatVersion: 1, codec: "fp16"),
                                   codec: ExactCompressor(precision: .fp16), tier: MemoryTier(budget: 1 << 24),
                                   configuration: StoreConfiguration(chunkTokens: 32, recentTokens: 16, tailPrecision: .fp16))
        let tokens = Fixtures.tokens(90, seed: 5)
        let cache = Fixtures.cache(tokens: 90, seed: 5)
        _ = try await store.store(tokens: tokens, cache: cache)
        let restored = try #require(await store.restore(tokens: tokens))
        #expect(restored.cache.keys == cache.keys.map { Float(Float16($0)) })
        #expect(restored.cache.values == cache.values.map { Float(Float16($0)) })
    }

    /// Corrupts, truncates and deletes entry files under a running store; every answer is
    /// either a miss, a shorter prefix, or exactly the cache first restored.
    @Test func damageUnderARunningStoreNeverServesBadData() async throws {
        let dir = Fixtures.temporaryDirectory()
        let disk = try DiskTier(directory: dir, quota: 1 << 26)
        let store = Fixtures.store(tier: disk)
        var expected: [([Int], KVCache)] = []
        for s in 0..<6 {
            let tokens = Fixtures.tokens(150, seed: 10 + s)
            _ = try await store.store(tokens: tokens, cache: Fixtures.cache(tokens: 150, seed: UInt64(10 + s)))
            expected.append((tokens, try #require(await store.restore(tokens: tokens)).cache))
        }
        var rng = SplitMix64(seed: 77)
        let fm = FileManager.default
        for round in 0..<30 {
            let entries = DiskTier.entriesDirectory(in: dir)
            let files = try fm.contentsOfDirectory(atPath: entries.path).filter { $0.hasSuffix(".kve") }.sorted()
            if let victim = files.randomElement(using: &rng) {
                let url = entries.appendingPathComponent(victim)
                switch round % 3 {
                case 0:
                    var bytes = try [UInt8](Data(contentsOf: url))
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
                    try Data(bytes).write(to: url)
                case 1:
                    let h = try FileHandle(forWritingTo: url)
                    try h.truncate(atOffset: UInt64.random(in: 0..<UInt64(try h.seekToEnd()), using: &rng))
                    try h.close()
                default:
                    try fm.removeItem(at: url)
                }
            }
            for (tokens, cache) in expected {
                guard let restored = await store.restore(tokens: tokens) else { continue }
                #expect(restored.usedTail == (restored.matchedTokens == tokens.count))
                #expect(Fixtures.sameDecoding(restored.cache, try cache.tokens(0..<restored.matchedTokens)), "a restored cache is the one stored")
            }
        }
        let stats = await disk.stats()
        #expect(stats.corruptDropped + stats.vanished > 0)
    }

    @Test func manyTasksStoreAndRestoreConcurrently() async throws {
        let memory = MemoryTier(budget: 1 << 22)
        let disk = try DiskTier(directory: Fixtures.temporaryDirectory(), quota: 1 << 24)
        let store = Fixtures.store(tier: TieredStore([memory, disk]))
        let conversations = (0..<6).map { s in (Fixtures.tokens(140, seed: 40 + s), Fixtures.cache(tokens: 140, seed: UInt64(40 + s))) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<12 {
                group.addTask {
                    let (tokens, cache) = conversations[task % conversations.count]
                    for length in stride(from: 40, through: 140, by: 50) {
                        _ = try await store.store(tokens: Array(tokens[0..<length]), cache: try cache.tokens(0..<length))
                        if let restored = await store.restore(tokens: Array(tokens[0..<length])), restored.usedTail {
                            #expect(restored.cache.positions == Array(0..<restored.matchedTokens))
                            let exact = try cache.tokens((restored.matchedTokens - 16)..<restored.matchedTokens)
                            let got = try restored.cache.tokens((restored.matchedTokens - 16)..<restored.matchedTokens)
                            #expect(got == exact)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        for (tokens, _) in conversations { #expect(await store.restore(tokens: tokens)?.matchedTokens == 140) }
        #expect(store.counters.invalidEntries == 0)
    }
}
