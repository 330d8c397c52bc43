/// Counters and sizes of one tier.
public struct TierStats: Sendable, Codable, Equatable {
    /// The tier's name (`memory`, `disk`, ...).
    public var name: String
    /// Entries held.
    public var entries: Int = 0
    /// Bytes held (as the tier accounts them: payload for memory, file size for disk).
    public var bytes: Int = 0
    /// Byte budget or quota, if any.
    public var capacity: Int?
    /// Reads that found an entry.
    public var hits: Int = 0
    /// Reads that found nothing (including entries dropped as corrupt).
    public var misses: Int = 0
    /// Entries written.
    public var writes: Int = 0
    /// Entries evicted to respect the budget.
    public var evictions: Int = 0
    /// Entries dropped because they failed verification (checksum, header, length).
    public var corruptDropped: Int = 0
    /// Entries that vanished from under the tier (deleted by someone else).
    public var vanished: Int = 0
    /// Leftover temporary files removed.
    public var orphansRemoved: Int = 0

    public init(name: String, capacity: Int? = nil) {
        self.name = name
        self.capacity = capacity
    }
}

/// One level of storage for entries addressed by ``StoreKey``: bytes in, bytes out.
///
/// Implementations must be safe under concurrent use and must never return bytes other
/// than those put under the key (verify and drop instead). The interface is deliberately
/// that of a key-value store so that a remote tier (Redis Cluster, S3-compatible object
/// storage) can implement it without changes to ``TieredStore``, ``CacheStore`` or the
/// server: keys are fixed-size hex-encodable digests, values opaque bytes, and the batch
/// ``contains(_:)-([StoreKey])`` maps onto a pipeline or `EXISTS` with many keys.
public protocol CacheTier: Sendable {
    /// A short name for metrics (`memory`, `disk`, `redis`, ...).
    var name: String { get }
    /// The bytes stored under `key`, or `nil` when absent (or dropped as corrupt).
    func get(_ key: StoreKey) async throws(TierError) -> [UInt8]?
    /// Stores `value` under `key`, replacing any previous value; may evict other entries.
    func put(_ key: StoreKey, _ value: [UInt8]) async throws(TierError)
    /// Removes `key` (no error when absent).
    func remove(_ key: StoreKey) async throws(TierError)
    /// Whether `key` is (believed to be) present; a later ``get(_:)`` may still miss.
    func contains(_ key: StoreKey) async throws(TierError) -> Bool
    /// Presence of many keys at once (one round trip for remote tiers).
    func contains(_ keys: [StoreKey]) async throws(TierError) -> [Bool]
    /// Hints that `key` is unlikely to be read again (e.g. a tail superseded by a longer
    /// one), making it the first candidate for eviction. Tiers without recency may ignore it.
    func demote(_ key: StoreKey) async
    /// Bytes held.
    var byteCount: Int { get async }
    /// Counters and sizes.
    func stats() async -> TierStats
}

extension CacheTier {
    public func demote(_ key: StoreKey) async {}

    public func contains(_ keys: [StoreKey]) async throws(TierError) -> [Bool] {
        var out: [Bool] = []
        out.reserveCapacity(keys.count)
        for k in keys { out.append(try await contains(k)) }
        return out
    }
}
