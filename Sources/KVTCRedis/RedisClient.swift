import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// What the client found at its seeds.
public enum RedisTopology: Sendable, Equatable, CustomStringConvertible {
    /// Not found yet: no seed has answered.
    case unknown
    /// One node without cluster support.
    case standalone(RedisAddress)
    /// A cluster: its masters and how many of the 16384 slots each serves.
    case cluster(masters: [RedisAddress: Int])

    public var description: String {
        switch self {
        case .unknown: return "Redis not reached yet"
        case .standalone(let a): return "standalone Redis at \(a)"
        case .cluster(let m):
            let covered = m.values.reduce(0, +)
            return "Redis Cluster of \(m.count) masters (\(m.keys.map(\.description).sorted().joined(separator: ", "))), \(covered) of \(HashSlot.count) slots served"
        }
    }
}

/// A client for a standalone Redis or a Redis Cluster, on SwiftNIO.
///
/// - Commands whose key is their first argument (`GET`, `SET`, `DEL`, `EXISTS`) are sent
///   in batches: grouped by the node that serves each key's slot and pipelined, all nodes at
///   once, so a batch costs about one round trip per node.
/// - The slot map comes from `CLUSTER SLOTS` at a seed; a node that answers that it has no
///   cluster support makes the client a standalone one. `MOVED` updates the map (and
///   refreshes it in the background); `ASK` retries once at the importing node after
///   `ASKING`.
/// - Every node's part of a batch has one time limit (``RedisConfiguration/timeout``) for
///   connecting and replying, counted from when it is sent; a node that fails is backed off (exponentially, up to
///   ``RedisConfiguration/maxBackoff``) and its keys fail at once meanwhile; a failure
///   also refreshes the topology, so a failover is followed.
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    private let group: any EventLoopGroup
    private let tls: NIOSSLContext?

    private enum Mode {
        case unknown
        case standalone(RedisAddress)
        /// The master serving each slot, `nil` where none does.
        case cluster([RedisAddress?])
    }

    private struct State {
        var mode: Mode = .unknown
        var nodes: [RedisAddress: RedisNode] = [:]
        var refreshing = false
        var lastRefresh: NIODeadline = .distantPast
        var closed = false
    }

    private let state = NIOLockedValueBox(State())

    /// The event loop of Redis connections unless another is given: a thread of its own, so
    /// that the cache's I/O never waits behind an HTTP server's event loops.
    public static let defaultEventLoopGroup: MultiThreadedEventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    /// A client for `configuration`'s nodes (nothing is connected until first use or
    /// ``connect()``).
    ///
    /// - Throws: ``RedisError/tls(_:)`` when TLS is asked for and its CA file cannot be used.
    public init(configuration: RedisConfiguration, group: any EventLoopGroup = RedisClient.defaultEventLoopGroup) throws(RedisError) {
        self.configuration = configuration
        self.group = group
        guard configuration.tls else { tls = nil; return }
        var settings = TLSConfiguration.makeClientConfiguration()
        settings.minimumTLSVersion = .tlsv12
        do {
            if let ca = configuration.tlsCAFile {
                settings.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
            }
            tls = try NIOSSLContext(configuration: settings)
        } catch {
            throw .tls("cannot use \(configuration.tlsCAFile ?? "the system's trust roots"): \(error)")
        }
    }

    private func node(_ address: RedisAddress) -> RedisNode {
        state.withLockedValue { s in
            if let n = s.nodes[address] { return n }
            let n = RedisNode(address: address, configuration: configuration, tls: tls, group: group)
            s.nodes[address] = n
            return n
        }
    }

    // MARK: Topology

    /// Finds the topology now (with a longer deadline than a command's: this is start-up).
    @discardableResult
    public func connect(timeout: Double = 2) async throws(RedisError) -> RedisTopology {
        try await refresh(timeout: timeout)
        return topology
    }

    /// The topology as currently known.
    public var topology: RedisTopology {
        state.withLockedValue { s in
            switch s.mode {
            case .unknown: return .unknown
            case .standalone(let a): return .standalone(a)
            case .cluster(let slots):
                var masters: [RedisAddress: Int] = [:]
                for case let a? in slots { masters[a, default: 0] += 1 }
                return .cluster(masters: masters)
            }
        }
    }

    /// Asks the seeds (then every known node) for the slot map, first answer wins.
    private func refresh(timeout: Double) async throws(RedisError) {
        let known = state.withLockedValue { Array($0.nodes.keys) }
        var candidates = configuration.seeds
        for a in known where !candidates.contains(a) { candidates.append(a) }
        var lastError = RedisError.connection("no seed nodes")
        for address in candidates {
            do {
                let reply = try await node(address).send([RedisCommand(["CLUSTER", "SLOTS"])], timeout: timeout)
                let mode = try Self.mode(from: reply.first, asked: address)
                state.withLockedValue {
                    $0.mode = mode
                    $0.lastRefresh = .now()
                }
                return
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    private static func mode(from reply: RESPValue?, asked: RedisAddress) throws(RedisError) -> Mode {
        guard let reply else { throw .protocolViolation("no reply to CLUSTER SLOTS") }
        if let e = reply.errorMessage {
            if e.lowercased().contains("cluster support disabled") { return .standalone(asked) }
            throw .server(e)
        }
        guard let ranges = reply.array else { throw .protocolViolation("CLUSTER SLOTS did not return an array") }
        var slots = [RedisAddress?](repeating: nil, count: HashSlot.count)
        for range in ranges {
            guard let r = range.array, r.count >= 3, let lo = r[0].integer, let hi = r[1].integer,
                  0 <= lo, lo <= hi, hi < HashSlot.count, let master = r[2].array, master.count >= 2,
                  let host = master[0].string, let port = master[1].integer, (1...65535).contains(port) else {
                throw .protocolViolation("malformed CLUSTER SLOTS entry")
            }
            // An empty host means "the address you reached me at".
            let address = RedisAddress(host: host.isEmpty || host == "?" ? asked.host : host, port: Int(port))
            for s in Int(lo)...Int(hi) { slots[s] = address }
        }
        return .cluster(slots)
    }

    /// Refreshes the slot map off the request path, at most once per `interval`.
    private func refreshInBackground(interval: Double = 0.25) {
        let start = state.withLockedValue { s -> Bool in
            guard !s.refreshing, !s.closed, s.lastRefresh + RedisNode.amount(interval) <= .now() else { return false }
            s.refreshing = true
            s.lastRefresh = .now()
            return true
        }
        guard start else { return }
        Task {
            try? await self.refresh(timeout: max(0.5, self.configuration.timeout))
            self.state.withLockedValue { $0.refreshing = false }
        }
    }

    private func route(_ key: [UInt8]) -> RedisAddress? {
        state.withLockedValue { s in
            switch s.mode {
            case .unknown: return nil
            case .standalone(let a): return a
            case .cluster(let slots): return slots[HashSlot.of(key)]
            }
        }
    }

    private func learn(slot: Int, at address: RedisAddress) {
        state.withLockedValue { s in
            if case .cluster(var slots) = s.mode {
                slots[slot] = address
                s.mode = .cluster(slots)
            }
        }
    }

    // MARK: Commands

    /// Runs keyed commands (the key is each command's first argument), grouped by node and
    /// pipelined; one result per command, in order. A server error reply is a failure
    /// (``RedisError/server(_:)``); nothing here throws as a whole.
    public func execute(_ commands: [RedisCommand], timeout: Double? = nil) async -> [Result<RESPValue, RedisError>] {
        guard !commands.isEmpty else { return [] }
        let timeout = timeout ?? configuration.timeout
        var results = [Result<RESPValue, RedisError>?](repeating: nil, count: commands.count)
        if case .unknown = state.withLockedValue({ $0.mode }) {
            do { try await refresh(timeout: timeout) } catch {
                refreshInBackground(interval: configuration.initialBackoff)
                return Array(repeating: .failure(error), count: commands.count)
            }
        }
        struct Pending { var index: Int; var target: RedisAddress?; var asking: Bool }
        var pending = commands.indices.map { i in
            Pending(index: i, target: commands[i].arguments.count > 1 ? route(commands[i].arguments[1]) : nil, asking: false)
        }
        for _ in 0..<4 where !pending.isEmpty {
            var byNode: [RedisAddress: [Pending]] = [:]
            for p in pending {
                guard let t = p.target else {
                    results[p.index] = .failure(.redirection("no node serves the slot of this key"))
                    continue
                }
                byNode[t, default: []].append(p)
            }
            pending = []
            // One pipeline per node, all nodes at once; results come back by node index.
            let targets = Array(byNode.keys)
            let outcomes = await withTaskGroup(of: (Int, Result<[RESPValue], RedisError>).self) { group in
                for (n, address) in targets.enumerated() {
                    let target = node(address)
                    var batch: [RedisCommand] = []
                    for p in byNode[address]! {
                        if p.asking { batch.append(RedisCommand(["ASKING"])) }
                        batch.append(commands[p.index])
                    }
                    group.addTask { [batch] in (n, await target.result(batch, timeout: timeout)) }
                }
                var all = [Result<[RESPValue], RedisError>](repeating: .failure(.connection("not sent")), count: targets.count)
                for await (n, r) in group { all[n] = r }
                return all
            }
            let replies = zip(targets, outcomes)
            for (address, outcome) in replies {
                let items = byNode[address]!
                switch outcome {
                case .failure(let error):
                    for p in items { results[p.index] = .failure(error) }
                    // The node may have failed over: look again (rate-limited).
                    if case .unavailable = error {} else { refreshInBackground() }
                case .success(var values):
                    for p in items {
                        if p.asking, !values.isEmpty { values.removeFirst() }
                        guard !values.isEmpty else {
                            results[p.index] = .failure(.protocolViolation("too few replies from \(address)"))
                            continue
                        }
                        let reply = values.removeFirst()
                        guard let message = reply.errorMessage else {
                            results[p.index] = .success(reply)
                            continue
                        }
                        if let (kind, slot, target) = Self.redirection(message) {
                            if kind == "MOVED" {
                                learn(slot: slot, at: target)
                                refreshInBackground()
                            }
                            pending.append(Pending(index: p.index, target: target, asking: kind == "ASK"))
                        } else {
                            results[p.index] = .failure(.server(message))
                        }
                    }
                }
            }
        }
        for p in pending { results[p.index] = .failure(.redirection("redirected too many times")) }
        return results.map { $0 ?? .failure(.redirection("not sent")) }
    }

    /// Parses `MOVED 3999 127.0.0.1:6381` / `ASK ...`.
    static func redirection(_ message: String) -> (String, Int, RedisAddress)? {
        let parts = message.split(separator: " ")
        guard parts.count == 3, parts[0] == "MOVED" || parts[0] == "ASK", let slot = Int(parts[1]),
              (0..<HashSlot.count).contains(slot), let address = try? RedisConfiguration.address(String(parts[2])) else { return nil }
        return (String(parts[0]), slot, address)
    }

    /// Runs one keyed command.
    public func execute(_ command: RedisCommand, timeout: Double? = nil) async -> Result<RESPValue, RedisError> {
        await execute([command], timeout: timeout)[0]
    }

    /// Sends a command to one node, unrouted (administration: `PING`, `INFO`, `FLUSHALL`).
    public func send(_ command: RedisCommand, to address: RedisAddress, timeout: Double? = nil) async throws(RedisError) -> RESPValue {
        let replies = try await node(address).send([command], timeout: timeout ?? configuration.timeout)
        guard let r = replies.first else { throw .protocolViolation("no reply") }
        if let e = r.errorMessage { throw .server(e) }
        return r
    }

    /// The masters currently known (the standalone node, or every node serving a slot).
    public var masters: [RedisAddress] {
        state.withLockedValue { s in
            switch s.mode {
            case .unknown: return []
            case .standalone(let a): return [a]
            case .cluster(let slots): return Array(Set(slots.compactMap { $0 })).sorted { $0.description < $1.description }
            }
        }
    }

    /// Closes every connection; later commands reconnect.
    public func close() {
        let nodes = state.withLockedValue { Array($0.nodes.values) }
        for n in nodes { n.close() }
    }

    deinit {
        for n in state.withLockedValue({ Array($0.nodes.values) }) { n.close() }
    }
}
