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
    /// Operations that failed (I/O or network errors, timeouts, a node backing off); the
    /// reads among them also count as misses.
    public var errors: Int = 0
    /// Entry bytes returned by reads.
    public var bytesRead: Int = 0
    /// Entry bytes accepted by writes.
    public var bytesWritten: Int = 0
    /// Writes given up (a remote tier's write queue was full, or the write failed).
    public var writesDropped: Int = 0
    /// Latency of a remote tier's round trips (one per batch), if it has any.
    public var roundTrips: LatencyHistogram?

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
    /// The bytes stored under each of `keys` (one round trip per node for remote tiers);
    /// `nil` where absent, dropped as corrupt, or unreadable.
    func get(_ keys: [StoreKey]) async -> [[UInt8]?]
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
    /// Waits until writes accepted so far have reached the tier's storage (a remote tier
    /// writes in the background); call it before a process that wrote entries exits.
    func flush() async
    /// Bytes held.
    var byteCount: Int { get async }
    /// Counters and sizes.
    func stats() async -> TierStats
}

extension CacheTier {
    public func demote(_ key: StoreKey) async {}

    public func flush() async {}

    public func get(_ keys: [StoreKey]) async -> [[UInt8]?] {
        var out: [[UInt8]?] = []
        out.reserveCapacity(keys.count)
        for k in keys { out.append((try? await get(k)) ?? nil) }
        return out
    }

    public func contains(_ keys: [StoreKey]) async throws(TierError) -> [Bool] {
        var out: [Bool] = []
        out.reserveCapacity(keys.count)
        for k in keys { out.append(try await contains(k)) }
        return out
    }
}

/// A latency histogram with fixed upper bounds in seconds (Prometheus' cumulative buckets).
public struct LatencyHistogram: Sendable, Codable, Equatable {
    /// Upper bounds of the buckets.
    public let bounds: [Double]
    /// Observations at or below each bound (cumulative).
    public private(set) var counts: [Int]
    /// Sum of all observations.
    public private(set) var sum = 0.0
    /// Number of observations.
    public private(set) var count = 0

    /// An empty histogram over `bounds`.
    public init(bounds: [Double] = LatencyHistogram.defaultBounds) {
        self.bounds = bounds
        counts = [Int](repeating: 0, count: bounds.count)
    }

    /// Records one observation.
    public mutating func observe(_ seconds: Double) {
        for (i, b) in bounds.enumerated() where seconds <= b { counts[i] += 1 }
        sum += seconds
        count += 1
    }

    /// Bounds from a millisecond to a minute.
    public static let defaultBounds: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
    /// Bounds for network round trips, from 100 microseconds to a second.
    public static let roundTripBounds: [Double] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
}
