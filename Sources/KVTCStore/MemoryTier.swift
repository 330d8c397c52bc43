/// An in-process tier with a byte budget and least-recently-used eviction.
///
/// An actor: safe under concurrent use. A value larger than the whole budget is refused
/// with ``TierError/entryTooLarge(bytes:capacity:)``.
public actor MemoryTier: CacheTier {
    public nonisolated let name: String
    /// The byte budget.
    public nonisolated let budget: Int
    private var values: [StoreKey: [UInt8]] = [:]
    private var order = LRUOrder<StoreKey>()
    private var bytes = 0
    private var counters: TierStats

    /// A tier holding at most `budget` bytes of values.
    public init(budget: Int, name: String = "memory") {
        self.name = name
        self.budget = max(0, budget)
        self.counters = TierStats(name: name, capacity: max(0, budget))
    }

    public func get(_ key: StoreKey) async throws(TierError) -> [UInt8]? {
        guard let v = values[key] else { counters.misses += 1; return nil }
        order.touch(key)
        counters.hits += 1
        counters.bytesRead += v.count
        return v
    }

    public func put(_ key: StoreKey, _ value: [UInt8]) async throws(TierError) {
        guard value.count <= budget else { throw .entryTooLarge(bytes: value.count, capacity: budget) }
        if let old = values.removeValue(forKey: key) { bytes -= old.count }
        while bytes + value.count > budget, let victim = order.leastRecent {
            order.remove(victim)
            if let v = values.removeValue(forKey: victim) { bytes -= v.count }
            counters.evictions += 1
        }
        values[key] = value
        order.touch(key)
        bytes += value.count
        counters.writes += 1
        counters.bytesWritten += value.count
    }

    public func remove(_ key: StoreKey) async throws(TierError) {
        if let v = values.removeValue(forKey: key) { bytes -= v.count }
        order.remove(key)
    }

    public func contains(_ key: StoreKey) async throws(TierError) -> Bool { values[key] != nil }

    public func contains(_ keys: [StoreKey]) async throws(TierError) -> [Bool] { keys.map { values[$0] != nil } }

    /// Makes `key` the first candidate for eviction (e.g. a tail superseded by a longer one).
    public func demote(_ key: StoreKey) { order.demote(key) }

    public var byteCount: Int { bytes }

    /// Keys from least to most recently used.
    public var keysByRecency: [StoreKey] { order.ordered }

    public func stats() async -> TierStats {
        var s = counters
        s.entries = values.count
        s.bytes = bytes
        return s
    }
}
