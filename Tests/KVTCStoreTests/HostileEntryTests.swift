import Foundation
import KVTCCache
import KVTCCodec
import KVTCNumerics
import Testing
import KVTCTestSupport
@testable import KVTCStore

/// Entries that are wrong in every way a store can check: they are refused on upload and,
/// when found in a tier (planted on disk, left by a bug), dropped with a counted reason
/// while the restore falls back to a shorter prefix or a miss — never an error, never a
/// cache of another shape.
@Suite struct HostileEntryTests {
    let tokens = Fixtures.tokens(80, seed: 11)

    /// A store holding `tokens`' cache, and the keys of its chunks and tail.
    func stored(_ tier: MemoryTier) async throws -> (CacheStore, [StoreKey], StoreKey) {
        let store = Fixtures.store(tier: tier)
        let receipt = try await store.store(tokens: tokens, cache: Fixtures.cache(tokens: 80, seed: 11))
        return (store, store.chain.chunkKeys(for: tokens), receipt.tailKey)
    }

    /// An entry like `entry` with another payload, in `chain`'s namespace.
    func replacing(_ entry: StoreEntry, payload: [UInt8]) -> [UInt8] {
        var e = entry
        e.payload = payload
        return e.encoded()
    }

    @Test func namespacesNeverSeeEachOthersEntries() async throws {
        let tier = MemoryTier(budget: 1 << 24)
        let store = Fixtures.store(tier: tier)
        let alice = StoreNamespace(tenant: "alice"), bob = StoreNamespace(tenant: "bob")
        let salted = StoreNamespace(tenant: "alice", salt: "s")
        _ = try await store.store(tokens: tokens, cache: Fixtures.cache(tokens: 80, seed: 11), namespace: alice)
        #expect(await store.restore(tokens: tokens, namespace: alice)?.matchedTokens == 80)
        for other in [bob, salted, StoreNamespace.shared] {
            #expect(await store.lookup(tokens: tokens, namespace: other) == nil, "\(other)")
            #expect(await store.restore(tokens: tokens, namespace: other) == nil, "\(other)")
        }
        // Alice's raw entries are invisible to Bob and cannot be put into Bob's namespace.
        let key = store.chain(for: alice).chunkKeys(for: tokens)[0]
        let bytes = try #require(await store.rawEntry(key, namespace: alice))
        #expect(await store.rawEntry(key, namespace: bob) == nil)
        #expect(await store.rawEntry(key, namespace: alice) != nil, "a foreign read does not drop the entry")
        await #expect(throws: StoreError.self) { try await store.putRawEntry(key, bytes, namespace: bob) }
        // Distinct namespaces give distinct identity digests.
        let digests = Set([alice, bob, salted, .shared].map { store.chain(for: $0).identityDigest })
        #expect(digests.count == 4)
    }

    @Test func uploadsNeverOverwrite() async throws {
        let (store, chunks, _) = try await stored(MemoryTier(budget: 1 << 24))
        let bytes = try #require(await store.rawEntry(chunks[0]))
        await #expect(throws: StoreError.exists(chunks[0].hex)) { try await store.putRawEntry(chunks[0], bytes) }
    }

    @Test func aTailOfAnotherGeometryIsRefusedAndDroppedNotRestored() async throws {
        let tier = MemoryTier(budget: 1 << 28)
        let (store, _, tailKey) = try await stored(tier)
        let entry = try StoreEntry(bytes: try #require(await tier.get(tailKey)), key: tailKey, chain: store.chain)
        // Like the remote-crash entry (one layer, one head, a huge head dimension), smaller.
        let huge = KVGeometry(layers: 1, kvHeads: 1, headDim: 1 << 16)
        var rows = KVCache(geometry: huge, rope: Fixtures.rope, reservingCapacity: 0)
        _ = rows.appendZeroedTokens(positions: Array(entry.exactStart..<entry.end))
        let bad = replacing(entry, payload: try ExactRows.encode(rows, precision: .fp16))
        let fresh = Fixtures.store(tier: MemoryTier(budget: 1 << 28))
        await #expect(throws: StoreError.self) { try await fresh.putRawEntry(tailKey, bad) }
        // Planted in the tier, it is dropped and the restore falls back to the chunks.
        try await tier.put(tailKey, bad)
        let restored = await store.restore(tokens: tokens)
        #expect(restored.map { $0.cache.geometry == Fixtures.geometry } ?? true)
        #expect(restored?.usedTail != true)
        #expect(store.counters.invalidEntriesByReason["geometry"] == 1)
        #expect(try await tier.contains(tailKey) == false)
    }

    @Test func aChunkDeclaringFarMoreTokensIsRefusedBeforeItIsInflated() async throws {
        let tier = MemoryTier(budget: 1 << 28)
        let (store, chunks, _) = try await stored(tier)
        let entry = try StoreEntry(bytes: try #require(await tier.get(chunks[1])), key: chunks[1], chain: store.chain)
        // A small blob whose sections inflate to megabytes: 8,192 tokens of zeros.
        let codec = try CacheStore.kvtcChunkCodec(profile: Fixtures.profile, ratio: 4)
        var zeros = KVCache(geometry: Fixtures.geometry, rope: Fixtures.rope, reservingCapacity: 8192)
        _ = zeros.appendZeroedTokens(positions: Array(32..<(32 + 8192)))
        let bomb = replacing(entry, payload: try codec.compress(zeros).bytes)
        let declared = try #require(try codec.shape(of: try codec.compress(zeros).bytes))
        #expect(declared.tokens == 8192)
        let fresh = Fixtures.store(tier: MemoryTier(budget: 1 << 28))
        await #expect(throws: StoreError.self) { try await fresh.putRawEntry(chunks[1], bomb) }
        try await tier.put(chunks[1], bomb)
        let restored = await store.restore(tokens: tokens)
        #expect((restored?.matchedTokens ?? 0) < 80)
        #expect(store.counters.invalidEntriesByReason["shape"] == 1, "\(store.counters.invalidEntriesByReason)")
    }

    @Test func aTailHoldingNaNsIsDropped() async throws {
        let tier = MemoryTier(budget: 1 << 24)
        let (store, _, tailKey) = try await stored(tier)
        let entry = try StoreEntry(bytes: try #require(await tier.get(tailKey)), key: tailKey, chain: store.chain)
        let rows = try ExactRows.decode(entry.payload)
        // Encode finite rows as f32, then make one key infinite in the bytes.
        var payload = try ExactRows.encode(rows, precision: .fp32)
        let offset = payload.count - 2 * 4 * rows.keys.count + 3 * 4
        withUnsafeBytes(of: Float.infinity.bitPattern.littleEndian) { for (i, b) in $0.enumerated() { payload[offset + i] = b } }
        let bad = replacing(entry, payload: payload)
        await #expect(throws: StoreError.self) { try await Fixtures.store(tier: MemoryTier(budget: 1 << 24)).putRawEntry(tailKey, bad) }
        try await tier.put(tailKey, bad)
        let restored = await store.restore(tokens: tokens)
        #expect(restored?.usedTail != true)
        #expect(store.counters.invalidEntriesByReason["nonfinite"] == 1, "\(store.counters.invalidEntriesByReason)")
    }
}
