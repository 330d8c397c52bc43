import Foundation
import KVTCNumerics
import KVTCRedis
import KVTCStore

/// Settings of a ``RedisTier``.
public struct RedisTierOptions: Sendable, Equatable {
    /// Prefix of every key the tier writes (the rest is the entry's key in hex).
    public var keyPrefix: String
    /// Expiry of written entries in seconds, or `nil` to keep them until Redis evicts them
    /// (configure `maxmemory-policy` as `allkeys-lru` for a cache).
    public var ttl: Double?
    /// Bytes of entries that may wait to be written; a write beyond is dropped and counted.
    public var writeQueueBytes: Int
    /// Deadline of a write batch (writes are off the request path, so it may exceed reads').
    public var writeTimeout: Double

    public init(keyPrefix: String = "kvtc:", ttl: Double? = nil, writeQueueBytes: Int = 256 << 20, writeTimeout: Double = 1) {
        self.keyPrefix = keyPrefix
        self.ttl = ttl
        self.writeQueueBytes = writeQueueBytes
        self.writeTimeout = writeTimeout
    }
}

/// A tier on a standalone Redis or a Redis Cluster, shared by every server that points at
/// it.
///
/// - **Keys** are ``RedisTierOptions/keyPrefix`` + the entry's key in hex. An entry's key
///   is a digest of the producer identity (model, profile, ratio, codec), the namespace
///   (tenant and `cache_salt`) and the tokens, so servers of another model or profile, and
///   other tenants, never address each other's entries.
/// - **Values** are sealed like the disk tier's files (``SealedEntry``: key, length,
///   SHA-256) and, with a signer (`--kv-secret`), followed by the HMAC-SHA256 of the sealed
///   bytes, so that whoever can write to Redis but lacks the secret cannot plant entries.
///   A value that fails verification is deleted, counted in ``TierStats/corruptDropped``
///   and never returned.
/// - **Reads** are batched: ``get(_:)-([StoreKey])`` and ``contains(_:)-([StoreKey])`` send
///   one pipeline per node, all nodes at once. Every failure (a node down, slow or
///   flapping, a timeout) is a miss counted in ``TierStats/errors``, never an error for
///   the request.
/// - **Writes** are queued and sent in pipelined batches by a background task, off the
///   request path; ``flush()`` waits for the queue to drain.
public final class RedisTier: CacheTier {
    public let name: String
    /// The client (shared with whoever made it).
    public let client: RedisClient
    /// The settings.
    public let options: RedisTierOptions
    /// Authenticates values, if the servers sharing the deployment share a secret.
    public let signer: EntrySigner?

    private struct Queue {
        var items: [(StoreKey, [UInt8])] = []
        var bytes = 0
        var draining = false
    }

    private let counters: Locked<TierStats>
    private let queue = Locked(Queue())

    /// A tier over `client`'s deployment, its values authenticated with `signer` if given.
    public init(client: RedisClient, options: RedisTierOptions = RedisTierOptions(), signer: EntrySigner? = nil,
                name: String = "redis") {
        self.name = name
        self.client = client
        self.options = options
        self.signer = signer
        var stats = TierStats(name: name)
        stats.roundTrips = LatencyHistogram(bounds: LatencyHistogram.roundTripBounds)
        counters = Locked(stats)
    }

    /// The Redis key of `key`.
    public func redisKey(_ key: StoreKey) -> [UInt8] { Array((options.keyPrefix + key.hex).utf8) }

    /// What is stored in Redis for `value` under `key`.
    func seal(_ key: StoreKey, _ value: [UInt8]) -> [UInt8] {
        let sealed = SealedEntry.encode(key: key, value: value)
        guard let signer else { return sealed }
        return sealed + signer.code(key, sealed)
    }

    /// The value in what Redis returned for `key`, or `nil` when it fails verification.
    func unseal(_ key: StoreKey, _ stored: [UInt8]) -> [UInt8]? {
        var sealed = stored[...]
        if let signer {
            guard stored.count > 32 else { return nil }
            sealed = stored.dropLast(32)
            guard signer.isValid(code: Array(stored.suffix(32)), key, Array(sealed)) else { return nil }
        }
        return try? SealedEntry.decode(Array(sealed), key: key)
    }

    private func timed(_ commands: [RedisCommand], timeout: Double? = nil) async -> [Result<RESPValue, RedisError>] {
        let clock = Date()
        let results = await client.execute(commands, timeout: timeout)
        let seconds = Date().timeIntervalSince(clock)
        counters.withLock { $0.roundTrips?.observe(seconds) }
        return results
    }

    public func get(_ key: StoreKey) async throws(TierError) -> [UInt8]? { await get([key])[0] }

    public func get(_ keys: [StoreKey]) async -> [[UInt8]?] {
        guard !keys.isEmpty else { return [] }
        let replies = await timed(keys.map { .get(redisKey($0)) })
        var values = [[UInt8]?](repeating: nil, count: keys.count)
        var corrupt: [StoreKey] = []
        var stats = (hits: 0, misses: 0, errors: 0, bytes: 0)
        for (i, reply) in replies.enumerated() {
            switch reply {
            case .success(.bulkString(let stored?)):
                if let value = unseal(keys[i], stored) {
                    values[i] = value
                    stats.hits += 1
                    stats.bytes += value.count
                } else {
                    corrupt.append(keys[i])
                    stats.misses += 1
                }
            case .success(.bulkString(nil)):
                stats.misses += 1
            case .success:
                // Not a string: not ours to serve.
                corrupt.append(keys[i])
                stats.misses += 1
            case .failure(.server(let m)) where m.hasPrefix("WRONGTYPE"):
                // Another program's key of another type under our prefix.
                corrupt.append(keys[i])
                stats.misses += 1
            case .failure:
                stats.errors += 1
                stats.misses += 1
            }
        }
        counters.withLock {
            $0.hits += stats.hits
            $0.misses += stats.misses
            $0.errors += stats.errors
            $0.bytesRead += stats.bytes
            $0.corruptDropped += corrupt.count
        }
        if !corrupt.isEmpty { _ = await timed(corrupt.map { .del(redisKey($0)) }) }
        return values
    }

    /// Queues `value` for writing; returns at once. When the queue is full the write is
    /// dropped (counted in ``TierStats/writesDropped``): the entry stays in the faster tiers.
    public func put(_ key: StoreKey, _ value: [UInt8]) async throws(TierError) {
        let sealed = seal(key, value)
        let start = queue.withLock { q -> Bool? in
            guard q.bytes + sealed.count <= options.writeQueueBytes else { return nil }
            q.items.append((key, sealed))
            q.bytes += sealed.count
            if q.draining { return false }
            q.draining = true
            return true
        }
        guard let start else {
            counters.withLock { $0.writesDropped += 1 }
            throw .entryTooLarge(bytes: sealed.count, capacity: options.writeQueueBytes)
        }
        if start { Task { await self.drain() } }
    }

    /// Writes queued entries in pipelined batches until the queue is empty.
    private func drain() async {
        let ttl = options.ttl.map { max(1, Int(($0 * 1000).rounded())) }
        while true {
            let batch = queue.withLock { q -> [(StoreKey, [UInt8])] in
                var taken = 0, bytes = 0
                while taken < q.items.count, taken < 64, bytes < 16 << 20 {
                    bytes += q.items[taken].1.count
                    taken += 1
                }
                let batch = Array(q.items.prefix(taken))
                q.items.removeFirst(taken)
                q.bytes -= bytes
                if batch.isEmpty { q.draining = false }
                return batch
            }
            if batch.isEmpty { return }
            let replies = await timed(batch.map { .set(redisKey($0.0), $0.1, ttlMilliseconds: ttl) }, timeout: options.writeTimeout)
            var written = 0, bytes = 0, failed = 0
            for (i, r) in replies.enumerated() {
                if case .success(.simpleString) = r {
                    written += 1
                    bytes += batch[i].1.count - SealedEntry.headerSize - (signer == nil ? 0 : 32)
                } else {
                    failed += 1
                }
            }
            counters.withLock {
                $0.writes += written
                $0.bytesWritten += bytes
                $0.errors += failed
                $0.writesDropped += failed
            }
        }
    }

    /// Waits until every queued write has been sent (or given up).
    public func flush() async {
        while queue.withLock({ $0.draining || !$0.items.isEmpty }) {
            try? await Task.sleep(nanoseconds: 1_000_000)
        }
    }

    /// Entries waiting to be written.
    public var queuedWrites: Int { queue.withLock { $0.items.count } }

    public func remove(_ key: StoreKey) async throws(TierError) {
        if case .failure(let e) = await timed([.del(redisKey(key))])[0] {
            counters.withLock { $0.errors += 1 }
            throw .io(e.description)
        }
    }

    public func contains(_ key: StoreKey) async throws(TierError) -> Bool { try await contains([key])[0] }

    /// Presence by `EXISTS`, pipelined per node; an unreachable node's keys are absent.
    public func contains(_ keys: [StoreKey]) async throws(TierError) -> [Bool] {
        guard !keys.isEmpty else { return [] }
        let replies = await timed(keys.map { .exists(redisKey($0)) })
        var errors = 0
        let present = replies.map { r -> Bool in
            switch r {
            case .success(let v): return (v.integer ?? 0) > 0
            case .failure: errors += 1; return false
            }
        }
        if errors > 0 { counters.withLock { [errors] in $0.errors += errors } }
        return present
    }

    /// Bytes held are Redis's to account (`INFO memory`); the tier reports none.
    public var byteCount: Int { 0 }

    public func stats() async -> TierStats { counters.current }
}
