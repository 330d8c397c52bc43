import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// A node's connections (opened on first use, replaced when they break) and its back-off:
/// after a failure the node is not tried again until the back-off passes, so a node that is
/// down or slow costs each operation at most one timeout and then nothing until it is
/// retried.
final class RedisNode: Sendable {
    let address: RedisAddress
    private let configuration: RedisConfiguration
    private let tls: NIOSSLContext?
    private let group: any EventLoopGroup

    private struct State {
        var connections: [EventLoopFuture<RedisConnection>?]
        var next = 0
        var failures = 0
        var retryAt: NIODeadline = .distantPast
    }

    private let state: NIOLockedValueBox<State>

    init(address: RedisAddress, configuration: RedisConfiguration, tls: NIOSSLContext?, group: any EventLoopGroup) {
        self.address = address
        self.configuration = configuration
        self.tls = tls
        self.group = group
        state = NIOLockedValueBox(State(connections: Array(repeating: nil, count: configuration.connectionsPerNode)))
    }

    /// Whether the node is in its back-off.
    var isBackingOff: Bool { state.withLockedValue { $0.retryAt > .now() } }

    /// ``send(_:timeout:)`` as a result.
    func result(_ commands: [RedisCommand], timeout: Double) async -> Result<[RESPValue], RedisError> {
        do { return .success(try await send(commands, timeout: timeout)) } catch { return .failure(error) }
    }

    /// Sends `commands` as one pipeline and returns their replies in order. Connecting (when
    /// the slot has no connection) and the exchange each get `timeout` seconds, counted from
    /// when each starts on the event loop's side: the time the node takes, not the time the
    /// caller's task waited to run between the two.
    func send(_ commands: [RedisCommand], timeout: Double) async throws(RedisError) -> [RESPValue] {
        let limit = Self.amount(timeout)
        let picked = state.withLockedValue { s -> (Int, EventLoopFuture<RedisConnection>)? in
            guard s.retryAt <= .now() else { return nil }
            let i = s.next
            s.next = (s.next + 1) % s.connections.count
            if let f = s.connections[i] { return (i, f) }
            let f = RedisConnection.connect(to: address, configuration: configuration, tls: tls, group: group, deadline: .now() + limit)
            s.connections[i] = f
            return (i, f)
        }
        guard let (slot, future) = picked else { throw .unavailable("\(address)") }
        do {
            var connection = try await future.value(before: .now() + limit, "connecting to \(address)")
            if !connection.isActive {
                // Closed since (timeout, server restart): one fresh connection.
                let f = replace(slot, broken: future, deadline: .now() + limit)
                connection = try await f.value(before: .now() + limit, "connecting to \(address)")
            }
            let replies = try await connection.send(commands, timeout: limit).value(before: .now() + limit + limit, "\(address)")
            state.withLockedValue { $0.failures = 0 }
            return replies
        } catch {
            failed(slot, future)
            throw error
        }
    }

    private func replace(_ slot: Int, broken: EventLoopFuture<RedisConnection>, deadline: NIODeadline) -> EventLoopFuture<RedisConnection> {
        state.withLockedValue { s in
            if let current = s.connections[slot], current !== broken { return current }
            let f = RedisConnection.connect(to: address, configuration: configuration, tls: tls, group: group, deadline: deadline)
            s.connections[slot] = f
            return f
        }
    }

    /// Drops the connection in `slot` and backs off.
    private func failed(_ slot: Int, _ future: EventLoopFuture<RedisConnection>) {
        future.whenSuccess { $0.close() }
        state.withLockedValue { s in
            if s.connections[slot] === future { s.connections[slot] = nil }
            s.failures += 1
            let wait = min(configuration.maxBackoff, configuration.initialBackoff * Double(1 << min(s.failures - 1, 16)))
            s.retryAt = .now() + Self.amount(wait)
        }
    }

    static func amount(_ seconds: Double) -> TimeAmount { .nanoseconds(Int64(max(0, seconds) * 1e9)) }

    /// Closes every connection.
    func close() {
        let futures = state.withLockedValue { s in
            defer { s.connections = Array(repeating: nil, count: s.connections.count) }
            return s.connections
        }
        for f in futures { f?.whenSuccess { $0.close() } }
    }
}
