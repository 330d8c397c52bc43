import KVTCNumerics
import Foundation
import KVTCCache
import KVTCCodec

/// Settings of a ``CacheStore``.
public struct StoreConfiguration: Sendable, Hashable {
    /// Tokens per chunk (default 256).
    public var chunkTokens: Int
    /// The tail always holds at least this many of the most recent tokens exactly (default 128).
    public var recentTokens: Int
    /// Precision of the tail's exact tokens.
    public var tailPrecision: ExactPrecision
    /// Whether a lookup without a matching tail may still return the stored chunks minus
    /// the last ``recentTokens`` tokens (which the caller then recomputes exactly).
    public var chunkOnlyMatches: Bool

    public init(chunkTokens: Int = 256, recentTokens: Int = 128, tailPrecision: ExactPrecision = .automatic,
                chunkOnlyMatches: Bool = true) {
        self.chunkTokens = chunkTokens
        self.recentTokens = recentTokens
        self.tailPrecision = tailPrecision
        self.chunkOnlyMatches = chunkOnlyMatches
    }
}

/// The longest stored prefix of a token sequence.
///
/// Either a stored prefix with its tail (its most recent tokens exact), or — when no tail
/// matches — the leading chunks minus the last ``StoreConfiguration/recentTokens`` tokens
/// of them, so the caller recomputes the most recent tokens exactly.
public struct PrefixMatch: Sendable, Equatable {
    /// Tokens of the prefix (`T`).
    public var matchedTokens: Int
    /// Keys of the chunks the restore reads, in order.
    public var chunkKeys: [StoreKey]
    /// Key of the tail holding the prefix's last tokens exactly; `nil` for a chunk-only match.
    public var tailKey: StoreKey?
}

/// A cache restored from the store.
public struct RestoredPrefix: Sendable {
    /// The cache of the first ``matchedTokens`` tokens.
    public var cache: KVCache
    /// Tokens restored.
    public var matchedTokens: Int
    /// Chunks decoded.
    public var chunks: Int
    /// Entry bytes read.
    public var bytesRead: Int
    /// Seconds spent on lookup, reads and decoding.
    public var seconds: Double
    /// Whether a tail was used (else the prefix ends ``StoreConfiguration/recentTokens``
    /// before the last matching chunk's end).
    public var usedTail: Bool { tailKey != nil }
    /// The tail used, if any (pass it to ``CacheStore/store(tokens:cache:superseding:)``
    /// when storing the continuation).
    public var tailKey: StoreKey?
}

/// What a ``CacheStore/store(tokens:cache:)`` call wrote.
public struct StoreReceipt: Sendable, Equatable {
    /// Tokens of the stored prefix.
    public var storedTokens: Int
    /// Chunks compressed and written.
    public var chunksWritten: Int
    /// Chunks already present (not recompressed).
    public var chunksReused: Int
    /// Entry bytes written (chunks and tail).
    public var bytesWritten: Int
    /// fp16 bytes of the written chunks' tokens.
    public var chunkFP16Bytes: Int
    /// Entry bytes of the written chunks.
    public var chunkBytes: Int
    /// Key of the tail written.
    public var tailKey: StoreKey
    /// Seconds spent compressing and writing.
    public var seconds: Double
}

/// Running totals of a ``CacheStore``.
public struct StoreCounters: Sendable, Codable, Equatable {
    /// Lookups made by ``CacheStore/restore(tokens:)``.
    public var lookups = 0
    /// Restores that returned a prefix.
    public var hits = 0
    /// Restores that found nothing usable.
    public var misses = 0
    /// Tokens restored in total.
    public var restoredTokens = 0
    /// Chunks written.
    public var chunksWritten = 0
    /// Tails written.
    public var tailsWritten = 0
    /// fp16 bytes of all chunks written.
    public var chunkFP16Bytes = 0
    /// Entry bytes of all chunks written.
    public var chunkBytes = 0
    /// Entry bytes of all tails written.
    public var tailBytes = 0
    /// Entries rejected on read (wrong key, undecodable payload) and removed.
    public var invalidEntries = 0
    /// ``invalidEntries`` by ``InvalidEntryReason`` (raw value).
    public var invalidEntriesByReason: [String: Int] = [:]

    /// fp16 bytes over stored bytes of the chunks written so far.
    public var chunkCompressionRatio: Double { chunkBytes == 0 ? 0 : Double(chunkFP16Bytes) / Double(chunkBytes) }
}

/// Why the store refused an entry it read (or was given): each is dropped from the tier and
/// counted; the request it was read for recomputes instead.
public enum InvalidEntryReason: String, Sendable, CaseIterable, Codable {
    /// Not an entry, or truncated.
    case format
    /// Made by another producer or namespace, or its contents do not hash to its key.
    case key
    /// Its tokens, positions or piece sizes do not match the place it claims.
    case shape
    /// Its geometry or RoPE is not the model's.
    case geometry
    /// Its payload does not decode.
    case decode
    /// It decodes to infinities or NaNs.
    case nonfinite
}

/// The geometry and RoPE of the model a store serves: every entry must declare exactly
/// these before anything in it is inflated or decoded.
public struct CacheShape: Sendable, Hashable {
    public var geometry: KVGeometry
    public var rope: RoPE
    /// Every layer's rotation and window.
    public var layerAttention: [LayerAttention]

    public init(geometry: KVGeometry, rope: RoPE, layerAttention: [LayerAttention]? = nil) {
        self.geometry = geometry
        self.rope = rope
        self.layerAttention = layerAttention ?? LayerAttention.uniform(rope, layers: geometry.layers)
    }

    /// Whether a piece declaring `declared` holds caches of this shape.
    func admits(_ declared: CompressedShape) -> Bool {
        declared.geometry == geometry && declared.rope == rope
            && (declared.layerAttention ?? LayerAttention.uniform(declared.rope, layers: declared.geometry.layers)) == layerAttention
    }

    /// Whether `cache` has this shape.
    func admits(_ cache: KVCache) -> Bool {
        cache.geometry == geometry && cache.rope == rope && cache.layerAttention == layerAttention
    }
}

/// A chunked, prefix-keyed store of KV caches.
///
/// A sequence of `T` tokens is stored as `T / C` chunks of `C` tokens compressed by the
/// chunk codec (keys chained by ``KeyChain``) plus a tail entry holding, exactly, every
/// token after the last full chunk and at least the ``StoreConfiguration/recentTokens``
/// most recent ones. With a KVTC chunk codec that keeps the sink tokens exact and no recent
/// tokens (see ``kvtcChunkCodec(profile:ratio:)``), a restored cache equals what the codec
/// alone gives for the whole cache with standard protection.
///
/// Every entry read is checked against its key (producer, namespace, anchor, tokens), its
/// declared shape against the model's (before anything is inflated), and decoded to finite
/// values before use; an invalid one is removed, counted by reason, and the restore falls
/// back to a shorter prefix.
///
/// Every operation takes a ``StoreNamespace``: entries of one namespace are invisible to
/// every other (their keys differ), so tenants never share, see or probe each other's
/// entries.
public final class CacheStore: Sendable {
    /// Computes keys (in the shared namespace; see ``chain(for:)``).
    public let chain: KeyChain
    /// Compresses chunks.
    public let codec: any CacheCompressor
    /// Where entries live.
    public let tier: any CacheTier
    /// Settings.
    public let configuration: StoreConfiguration
    /// The model's cache shape, if known: entries declaring another are refused.
    public let shape: CacheShape?
    private let totals = Locked(StoreCounters())

    /// A store for `identity`'s caches, compressing chunks with `codec`, keeping entries in
    /// `tier`; entries must declare `shape` (the model's geometry and RoPE) when given.
    public init(identity: ProducerIdentity, codec: any CacheCompressor, tier: any CacheTier,
                configuration: StoreConfiguration = StoreConfiguration(), shape: CacheShape? = nil) throws(StoreError) {
        guard configuration.chunkTokens > 0, configuration.recentTokens >= 0 else {
            throw .configuration("chunk tokens \(configuration.chunkTokens), recent tokens \(configuration.recentTokens)")
        }
        self.chain = KeyChain(identity: identity, chunkTokens: configuration.chunkTokens)
        self.codec = codec
        self.tier = tier
        self.configuration = configuration
        self.shape = shape
    }

    /// The key chain of `namespace`.
    public func chain(for namespace: StoreNamespace) -> KeyChain { chain.inNamespace(namespace) }

    /// A KVTC compressor for chunks: the profile's sink tokens exact (decided by absolute
    /// position, so only the first chunk has any) and no recent tokens (the tail keeps them).
    ///
    /// Chunks keep every layer of every token (no window trimming): a chunk is a restore
    /// point for every later prefix, and a chunk-only match restores up to
    /// ``StoreConfiguration/recentTokens`` before a chunk's end, where a sliding layer still
    /// sees `window - 1` tokens back. A chunk of `C` tokens has a row no such restore reads
    /// only when `C > window + recentTokens` (1,152 tokens for Gemma 3's window of 512 and
    /// the default 128), far beyond the default 256.
    public static func kvtcChunkCodec(profile: Profile, ratio: Double, coder: LosslessCoder = KVTCCompressor.defaultCoder) throws(KVTCError) -> KVTCCompressor {
        var c = try KVTCCompressor(profile: profile, ratio: ratio,
                                   protection: Protection(sinkTokens: profile.protection.sinkTokens, recentTokens: 0),
                                   coder: coder)
        c.trimsWindows = false
        return c
    }

    /// Running totals.
    public var counters: StoreCounters { totals.current }

    var chunkTokens: Int { configuration.chunkTokens }

    /// First token held by the tail of a prefix of `count` tokens.
    public func tailStart(count: Int) -> Int {
        max(0, min((count / chunkTokens) * chunkTokens, count - configuration.recentTokens))
    }

    static func keyable(_ tokens: [Int]) -> Bool { tokens.allSatisfy { $0 >= 0 && $0 <= Int(UInt32.max) } }

    // MARK: Lookup

    /// The longest stored prefix of `tokens` (chunks present and a tail for exactly that
    /// prefix, or a chunk-only match when that is longer and allowed), or `nil`.
    public func lookup(tokens: [Int], namespace: StoreNamespace = .shared) async -> PrefixMatch? {
        guard !tokens.isEmpty, Self.keyable(tokens) else { return nil }
        let chain = self.chain(for: namespace)
        let c = chunkTokens
        let keys = chain.chunkKeys(for: tokens)
        let present = (try? await tier.contains(keys)) ?? [Bool](repeating: false, count: keys.count)
        var j = 0
        while j < keys.count, present[j] { j += 1 }
        let chunkOnly = configuration.chunkOnlyMatches ? j * c - configuration.recentTokens : 0
        // A tail may reach back over chunks it holds exactly, so anchors past the last
        // present chunk count as long as the chunks before the tail's first token are present.
        let highest = min(keys.count, (j * c + configuration.recentTokens) / c)
        for m in stride(from: highest, through: 0, by: -1) {
            guard m * c + c - 1 > chunkOnly else { break }
            let lo = max(m * c, 1), hi = min(tokens.count, m * c + c - 1)
            guard lo <= hi else { continue }
            let lengths = (lo...hi).reversed().filter { (tailStart(count: $0) + c - 1) / c <= j }
            guard !lengths.isEmpty else { continue }
            let anchor = m == 0 ? StoreKey.root : keys[m - 1]
            let tails = chain.tailKeys(for: tokens, anchor: anchor, chunks: m, lengths: lengths)
            guard let found = try? await tier.contains(tails), let i = found.firstIndex(of: true) else { continue }
            let t = lengths[i]
            guard t > chunkOnly else { break }
            let needed = (tailStart(count: t) + c - 1) / c
            return PrefixMatch(matchedTokens: t, chunkKeys: Array(keys[0..<needed]), tailKey: tails[i])
        }
        guard chunkOnly > 0 else { return nil }
        return PrefixMatch(matchedTokens: chunkOnly, chunkKeys: Array(keys[0..<((chunkOnly + c - 1) / c)]), tailKey: nil)
    }

    // MARK: Restore

    /// Restores the longest stored prefix of `tokens`: its cache and length, or `nil`.
    ///
    /// - Parameter capacity: tokens the restored cache should have room for (say, the whole
    ///   prompt plus the tokens to generate), so that extending it does not copy it.
    public func restore(tokens: [Int], namespace: StoreNamespace = .shared,
                        reservingCapacity capacity: Int = 0) async -> RestoredPrefix? {
        let clock = Date()
        totals.withLock { $0.lookups += 1 }
        let chain = self.chain(for: namespace)
        for _ in 0..<3 {
            guard let match = await lookup(tokens: tokens, namespace: namespace) else { break }
            if var restored = await fetch(match, chain: chain, capacity: capacity) {
                restored.seconds = Date().timeIntervalSince(clock)
                totals.withLock {
                    $0.hits += 1
                    $0.restoredTokens += restored.matchedTokens
                }
                return restored
            }
        }
        totals.withLock { $0.misses += 1 }
        return nil
    }

    /// Verifies the bytes read for `key`; drops the entry from the tier when invalid.
    private func entry(_ key: StoreKey, _ bytes: [UInt8]?, chain: KeyChain) async -> (StoreEntry, Int)? {
        guard let bytes else { return nil }
        do {
            return (try StoreEntry(bytes: bytes, key: key, chain: chain), bytes.count)
        } catch {
            await drop(key, Self.reason(error))
            return nil
        }
    }

    static func reason(_ error: StoreError) -> InvalidEntryReason {
        switch error {
        case .foreignEntry: return .key
        case .misplacedEntry: return .shape
        default: return .format
        }
    }

    /// Removes an invalid entry from the tier and counts it under `reason`.
    private func drop(_ key: StoreKey, _ reason: InvalidEntryReason) async {
        try? await tier.remove(key)
        totals.withLock {
            $0.invalidEntries += 1
            $0.invalidEntriesByReason[reason.rawValue, default: 0] += 1
        }
    }

    /// Checks what a piece declares against the store's shape and the tokens it must hold,
    /// before anything in it is inflated or decoded.
    private func checkDeclared(_ declared: CompressedShape?, tokens: Int, first: Int) -> InvalidEntryReason? {
        guard let declared else { return nil }
        if let shape, !shape.admits(declared) { return .geometry }
        guard declared.tokens == tokens else { return .shape }
        if declared.tokens > 0, let p = declared.firstPosition, p != first { return .shape }
        return nil
    }

    /// Checks a tail read for `key`: its rows and the token index they start at.
    private func fetchTail(_ key: StoreKey, _ bytes: [UInt8]?, chain: KeyChain, count t: Int, chunks: Int) async -> (KVCache, Int, Int)? {
        let c = chunkTokens
        guard let (tail, size) = await entry(key, bytes, chain: chain) else { return nil }
        guard tail.kind == .tail, tail.end == t else { await drop(key, .shape); return nil }
        let declared: CompressedShape
        do { declared = try ExactRows.shape(of: tail.payload) } catch { await drop(key, .format); return nil }
        if let reason = checkDeclared(declared, tokens: t - tail.exactStart, first: tail.exactStart) {
            await drop(key, reason)
            return nil
        }
        let rows: KVCache
        do { rows = try ExactRows.decode(tail.payload) } catch {
            await drop(key, error.description.contains("NaN") ? .nonfinite : .decode)
            return nil
        }
        // A tail made with fewer recent tokens than this store wants is not used.
        guard t - tail.exactStart >= min(t, configuration.recentTokens), (tail.exactStart + c - 1) / c == chunks else {
            return nil
        }
        return (rows, tail.exactStart, size)
    }

    /// Reads (in one batch), checks and decodes the entries of `match` into one cache with
    /// room for `capacity` tokens: chunks are decoded straight into its storage, in order,
    /// and the rows past the tail's first token are then replaced by the tail's exact rows.
    private func fetch(_ match: PrefixMatch, chain: KeyChain, capacity: Int) async -> RestoredPrefix? {
        let c = chunkTokens
        let t = match.matchedTokens
        var tailRows: KVCache?
        var exactStart = t
        var bytesRead = 0
        var read = await tier.get((match.tailKey.map { [$0] } ?? []) + match.chunkKeys)[...]
        if let key = match.tailKey {
            guard let (rows, start, size) = await fetchTail(key, read.removeFirst(), chain: chain, count: t,
                                                            chunks: match.chunkKeys.count) else { return nil }
            tailRows = rows
            exactStart = start
            bytesRead = size
        }
        var payloads: [[UInt8]] = []
        for (i, (key, bytes)) in zip(match.chunkKeys, read).enumerated() {
            guard let (chunk, size) = await entry(key, bytes, chain: chain) else { return nil }
            bytesRead += size
            guard chunk.kind == .chunk, chunk.start == i * c, chunk.tokens.count == c else { await drop(key, .shape); return nil }
            let declared: CompressedShape?
            do { declared = try codec.shape(of: chunk.payload) } catch { await drop(key, .format); return nil }
            if let reason = checkDeclared(declared, tokens: c, first: i * c) { await drop(key, reason); return nil }
            payloads.append(chunk.payload)
        }
        var cache: KVCache
        var pieces = payloads[...]
        if let tailRows {
            cache = KVCache(geometry: tailRows.geometry, rope: tailRows.rope, layerAttention: tailRows.layerAttention,
                            model: tailRows.model, reservingCapacity: max(capacity, t))
        } else if let head = pieces.popFirst() {
            // A chunk-only match: the first chunk gives the geometry.
            do { cache = try codec.decompress(head) } catch { await drop(match.chunkKeys[0], .decode); return nil }
            if let shape, !shape.admits(cache) {
                await drop(match.chunkKeys[0], .geometry)
                return nil
            }
            cache.reserveCapacity(tokens: max(capacity, t))
        } else {
            return nil
        }
        do { try codec.decompress(sequence: Array(pieces), appendingTo: &cache) } catch {
            await drop(match.chunkKeys[payloads.count - pieces.count + error.index], .decode)
            return nil
        }
        // Every chunk must have decoded to exactly its own tokens, all finite.
        guard cache.tokenCount == payloads.count * c else {
            for key in match.chunkKeys { await drop(key, .shape) }
            return nil
        }
        for i in payloads.indices {
            let range = (i * c)..<(i * c + c)
            guard range.allSatisfy({ cache.positions[$0] == $0 }) else { await drop(match.chunkKeys[i], .shape); return nil }
            guard (try? cache.validateFinite(tokens: range)) != nil else { await drop(match.chunkKeys[i], .nonfinite); return nil }
        }
        cache.truncate(to: min(exactStart, cache.tokenCount))
        if let tailRows, let key = match.tailKey {
            do { try cache.append(contentsOf: tailRows) } catch { await drop(key, .geometry); return nil }
        }
        guard cache.tokenCount == t else { return nil }
        return RestoredPrefix(cache: cache, matchedTokens: t, chunks: match.chunkKeys.count, bytesRead: bytesRead, seconds: 0,
                              tailKey: match.tailKey)
    }

    // MARK: Store

    /// Stores the cache of `tokens`: compresses and writes the chunks not yet present and
    /// a tail for the whole sequence.
    ///
    /// - Parameters:
    ///   - tokens: the token ids the cache holds, in order.
    ///   - cache: their cache; positions must be `0..<tokens.count`.
    ///   - superseding: the tail this sequence continues (from ``RestoredPrefix/tailKey``);
    ///     it is demoted so it is evicted before live entries.
    public func store(tokens: [Int], cache: KVCache, namespace: StoreNamespace = .shared,
                      superseding: StoreKey? = nil) async throws(StoreError) -> StoreReceipt {
        let clock = Date()
        let chain = self.chain(for: namespace)
        if let shape, !shape.admits(cache) {
            throw .mismatch("a cache of \(cache.geometry) is not this store's \(shape.geometry)")
        }
        let t = tokens.count
        guard cache.tokenCount == t else { throw .mismatch("\(t) tokens, cache holds \(cache.tokenCount)") }
        if let bad = tokens.first(where: { $0 < 0 || $0 > Int(UInt32.max) }) { throw .invalidToken(bad) }
        for (i, p) in cache.positions.enumerated() where p != i {
            throw .mismatch("token \(i) is at position \(p); stored caches start at position 0")
        }
        guard t > 0 else { throw .mismatch("nothing to store") }
        let c = chunkTokens
        let keys = chain.chunkKeys(for: tokens)
        let present = (try? await tier.contains(keys)) ?? [Bool](repeating: false, count: keys.count)
        var receipt = StoreReceipt(storedTokens: t, chunksWritten: 0, chunksReused: 0, bytesWritten: 0,
                                   chunkFP16Bytes: 0, chunkBytes: 0, tailKey: .root, seconds: 0)
        for (i, key) in keys.enumerated() {
            if present[i] { receipt.chunksReused += 1; continue }
            let part: KVCache
            do { part = try cache.tokens((i * c)..<((i + 1) * c)) } catch { throw .mismatch(error.description) }
            let compressed: CompressedCache
            do { compressed = try codec.compress(part) } catch { throw .codec(ChunkCodecError(error)) }
            let entry = StoreEntry(kind: .chunk, identityDigest: chain.identityDigest,
                                   anchor: i == 0 ? .root : keys[i - 1], start: i * c,
                                   tokens: Array(tokens[(i * c)..<((i + 1) * c)]), exactStart: i * c,
                                   payload: compressed.bytes)
            let bytes = entry.encoded()
            do { try await tier.put(key, bytes) } catch { throw .tier(error) }
            receipt.chunksWritten += 1
            receipt.bytesWritten += bytes.count
            receipt.chunkBytes += bytes.count
            receipt.chunkFP16Bytes += part.fp16Bytes
        }
        let m = keys.count
        let exactStart = tailStart(count: t)
        let tailRows: KVCache
        do { tailRows = try cache.tokens(exactStart..<t) } catch { throw .mismatch(error.description) }
        let tail = StoreEntry(kind: .tail, identityDigest: chain.identityDigest, anchor: m == 0 ? .root : keys[m - 1],
                              start: m * c, tokens: Array(tokens[(m * c)..<t]), exactStart: exactStart,
                              payload: try ExactRows.encode(tailRows, precision: configuration.tailPrecision))
        let tailBytes = tail.encoded()
        let tailKey = tail.key(in: chain)
        do { try await tier.put(tailKey, tailBytes) } catch { throw .tier(error) }
        receipt.bytesWritten += tailBytes.count
        receipt.tailKey = tailKey
        if let superseding, superseding != tailKey { await tier.demote(superseding) }
        receipt.seconds = Date().timeIntervalSince(clock)
        totals.withLock {
            $0.chunksWritten += receipt.chunksWritten
            $0.tailsWritten += 1
            $0.chunkFP16Bytes += receipt.chunkFP16Bytes
            $0.chunkBytes += receipt.chunkBytes
            $0.tailBytes += tailBytes.count
        }
        return receipt
    }

    // MARK: Raw entries

    /// The verified bytes of the entry stored under `key` in `namespace` (for
    /// replication), or `nil`.
    public func rawEntry(_ key: StoreKey, namespace: StoreNamespace = .shared) async -> [UInt8]? {
        guard let bytes = try? await tier.get(key) else { return nil }
        do { _ = try StoreEntry(bytes: bytes, key: key, chain: chain(for: namespace)) } catch {
            // Another namespace's entry is not this caller's to see, nor to drop.
            if Self.reason(error) != .key { await drop(key, Self.reason(error)) }
            return nil
        }
        return bytes
    }

    /// Stores entry bytes under `key` in `namespace` after checking that they are a valid
    /// entry of this store's producer for exactly that key, that the declared shape is the
    /// store's (before anything is inflated), and that the payload decodes to finite values
    /// of exactly the entry's tokens. An existing entry is never overwritten
    /// (``StoreError/exists(_:)``).
    public func putRawEntry(_ key: StoreKey, _ bytes: [UInt8], namespace: StoreNamespace = .shared) async throws(StoreError) {
        let entry = try StoreEntry(bytes: bytes, key: key, chain: chain(for: namespace))
        if (try? await tier.contains(key)) == true { throw .exists(key.hex) }
        switch entry.kind {
        case .chunk:
            let declared: CompressedShape?
            do { declared = try codec.shape(of: entry.payload) } catch { throw .invalidEntry("payload: \(error)") }
            if let reason = checkDeclared(declared, tokens: entry.tokens.count, first: entry.start) {
                throw .invalidEntry("payload \(reason.rawValue) does not match this store")
            }
            let decoded: KVCache
            do { decoded = try codec.decompress(entry.payload) } catch { throw .invalidEntry("payload: \(error)") }
            guard decoded.tokenCount == entry.tokens.count, decoded.positions.first == entry.start else {
                throw .invalidEntry("payload holds \(decoded.tokenCount) tokens from \(decoded.positions.first ?? -1)")
            }
            if let shape, !shape.admits(decoded) {
                throw .invalidEntry("payload geometry \(decoded.geometry) is not this store's")
            }
            do { try decoded.validateFinite() } catch { throw .invalidEntry(error.description) }
        case .tail:
            let declared = try ExactRows.shape(of: entry.payload)
            if let reason = checkDeclared(declared, tokens: entry.end - entry.exactStart, first: entry.exactStart) {
                throw .invalidEntry("tail rows: \(reason.rawValue) does not match this store")
            }
            _ = try ExactRows.decode(entry.payload)
        }
        do { try await tier.put(key, bytes) } catch { throw .tier(error) }
    }
}
