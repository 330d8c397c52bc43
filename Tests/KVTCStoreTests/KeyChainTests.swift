import Testing
import KVTCCodec
@testable import KVTCStore

@Suite struct KeyChainTests {
    let fixed = ProducerIdentity(modelHash: "m", profileHash: "p", codecFormatVersion: 1, codec: "kvtc 16x")

    @Test func keysAreStableAcrossInstancesAndPinned() {
        let tokens = Array(0..<600)
        let a = KeyChain(identity: fixed, chunkTokens: 256).chunkKeys(for: tokens)
        let b = KeyChain(identity: fixed, chunkTokens: 256).chunkKeys(for: tokens)
        #expect(a.count == 2)
        #expect(a == b)
        // Pinned: keys must not change between releases, processes or machines.
        #expect(a[0].hex == KeyChainTests.pinnedFirstKey)
    }

    static let pinnedFirstKey = "8d066fa370a68da69776d09a3ea0af6eb191d1f82ff63aa3c04f3ddaad1a7193"

    @Test func keysAreChained() {
        let chain = KeyChain(identity: fixed, chunkTokens: 4)
        let base = Array(0..<12)
        let keys = chain.chunkKeys(for: base)
        var early = base
        early[1] = 99
        let changedEarly = chain.chunkKeys(for: early)
        #expect(zip(keys, changedEarly).allSatisfy { $0 != $1 }, "a change in chunk 0 changes every later key")
        var late = base
        late[9] = 99
        let changedLate = chain.chunkKeys(for: late)
        #expect(changedLate[0] == keys[0] && changedLate[1] == keys[1] && changedLate[2] != keys[2])
        #expect(keys[1] == chain.key(kind: .chunk, anchor: keys[0], start: 4, tokens: base[4..<8]))
    }

    @Test func differentProducersGetDifferentKeys() {
        let tokens = Array(0..<8)
        var variants = [fixed]
        var v = fixed; v.modelHash = "m2"; variants.append(v)
        v = fixed; v.profileHash = "p2"; variants.append(v)
        v = fixed; v.codecFormatVersion = 2; variants.append(v)
        v = fixed; v.codec = "kvtc 32x"; variants.append(v)
        let keys = variants.map { KeyChain(identity: $0, chunkTokens: 4).chunkKeys(for: tokens)[0] }
        #expect(Set(keys).count == variants.count)
    }

    @Test func tailKeysNameTheWholePrefix() {
        let chain = KeyChain(identity: fixed, chunkTokens: 4)
        let tokens = Array(0..<11)
        let chunks = chain.chunkKeys(for: tokens)
        let t10 = chain.tailKey(for: tokens, count: 10, chunkKeys: chunks)
        let t11 = chain.tailKey(for: tokens, count: 11, chunkKeys: chunks)
        let t8 = chain.tailKey(for: tokens, count: 8, chunkKeys: chunks)
        #expect(Set([t10, t11, t8]).count == 3)
        #expect(!chunks.contains(t8), "a tail never shares a chunk's key")
        var other = tokens
        other[0] = 42
        #expect(chain.tailKey(for: other, count: 10, chunkKeys: chain.chunkKeys(for: other)) != t10)
        // Incremental hashing agrees with direct hashing.
        let batch = chain.tailKeys(for: tokens, anchor: chunks[1], chunks: 2, lengths: [11, 8, 10])
        #expect(batch == [t11, t8, t10])
    }

    @Test func hexRoundTrips() {
        let k = KeyChain(identity: fixed).key(kind: .chunk, anchor: .root, start: 0, tokens: [1, 2, 3])
        #expect(StoreKey(hex: k.hex) == k)
        #expect(StoreKey(hex: k.hex.uppercased()) == k)
        #expect(StoreKey(hex: "zz") == nil)
        #expect(StoreKey(hex: String(repeating: "g", count: 64)) == nil)
    }

    @Test func entriesVerifyAgainstTheirKey() throws {
        let chain = KeyChain(identity: fixed, chunkTokens: 4)
        let entry = StoreEntry(kind: .chunk, identityDigest: chain.identityDigest, anchor: .root, start: 0,
                               tokens: [1, 2, 3, 4], exactStart: 0, payload: [9, 9])
        let key = entry.key(in: chain)
        let bytes = entry.encoded()
        #expect(try StoreEntry(bytes: bytes, key: key, chain: chain) == entry)
        let otherKey = KeyChain(identity: fixed, chunkTokens: 4).key(kind: .chunk, anchor: .root, start: 0, tokens: [1, 2, 3, 5])
        #expect(throws: StoreError.self) { try StoreEntry(bytes: bytes, key: otherKey, chain: chain) }
        var foreign = fixed
        foreign.modelHash = "other"
        #expect(throws: StoreError.self) { try StoreEntry(bytes: bytes, key: key, chain: KeyChain(identity: foreign, chunkTokens: 4)) }
        #expect(throws: StoreError.self) { try StoreEntry(bytes: Array(bytes.dropLast()), key: key, chain: chain) }
    }
}
