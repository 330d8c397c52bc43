import KVTCNumerics

/// Tiers stacked fastest first: reads fall through until a tier has the entry and promote
/// it into every faster tier; writes go through to every tier.
///
/// A failing tier (I/O error, too-large entry) is skipped rather than failing the whole
/// operation, so a remote tier's outage degrades to misses. ``TieredStore`` is itself a
/// ``CacheTier``, so stacks compose.
public struct TieredStore: CacheTier {
    /// The tiers, fastest first.
    public let tiers: [any CacheTier]
    public let name: String
    private let counters = Locked(TierStats(name: "tiered"))

    /// Stacks `tiers`, fastest first (at least one).
    public init(_ tiers: [any CacheTier], name: String = "tiered") {
        precondition(!tiers.isEmpty, "a tiered store needs at least one tier")
        self.tiers = tiers
        self.name = name
    }

    public func get(_ key: StoreKey) async throws(TierError) -> [UInt8]? {
        for (i, tier) in tiers.enumerated() {
            guard let value = try? await tier.get(key) else { continue }
            for faster in tiers[0..<i] { try? await faster.put(key, value) }
            counters.withLock { $0.hits += 1 }
            return value
        }
        counters.withLock { $0.misses += 1 }
        return nil
    }

    /// Reads every key from the fastest tier holding it (each tier asked once for the keys
    /// still missing) and promotes what slower tiers returned into the faster ones.
    public func get(_ keys: [StoreKey]) async -> [[UInt8]?] {
        var values = [[UInt8]?](repeating: nil, count: keys.count)
        for (i, tier) in tiers.enumerated() {
            let missing = keys.indices.filter { values[$0] == nil }
            if missing.isEmpty { break }
            let found = await tier.get(missing.map { keys[$0] })
            for (j, k) in missing.enumerated() {
                guard let v = found[j] else { continue }
                values[k] = v
                for faster in tiers[0..<i] { try? await faster.put(keys[k], v) }
            }
        }
        let hits = values.reduce(0) { $0 + ($1 == nil ? 0 : 1) }
        counters.withLock {
            $0.hits += hits
            $0.misses += keys.count - hits
        }
        return values
    }

    public func put(_ key: StoreKey, _ value: [UInt8]) async throws(TierError) {
        var stored = false
        var lastError: TierError?
        for tier in tiers {
            do {
                try await tier.put(key, value)
                stored = true
            } catch { lastError = error }
        }
        if !stored, let lastError { throw lastError }
        counters.withLock { $0.writes += 1 }
    }

    public func remove(_ key: StoreKey) async throws(TierError) {
        for tier in tiers { try await tier.remove(key) }
    }

    public func contains(_ key: StoreKey) async throws(TierError) -> Bool {
        for tier in tiers where (try? await tier.contains(key)) == true { return true }
        return false
    }

    public func contains(_ keys: [StoreKey]) async throws(TierError) -> [Bool] {
        var present = [Bool](repeating: false, count: keys.count)
        for tier in tiers {
            let missing = keys.indices.filter { !present[$0] }
            if missing.isEmpty { break }
            guard let found = try? await tier.contains(missing.map { keys[$0] }) else { continue }
            for (j, i) in missing.enumerated() where found[j] { present[i] = true }
        }
        return present
    }

    public func demote(_ key: StoreKey) async {
        for tier in tiers { await tier.demote(key) }
    }

    public func flush() async {
        for tier in tiers { await tier.flush() }
    }

    /// Bytes held by all tiers together.
    public var byteCount: Int {
        get async {
            var total = 0
            for tier in tiers { total += await tier.byteCount }
            return total
        }
    }

    public func stats() async -> TierStats {
        var s = counters.current
        s.bytes = await byteCount
        return s
    }

    /// Statistics of every tier, fastest first.
    public func tierStats() async -> [TierStats] {
        var out: [TierStats] = []
        for tier in tiers { out.append(await tier.stats()) }
        return out
    }
}
