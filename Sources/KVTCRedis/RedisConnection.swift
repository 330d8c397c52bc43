import NIOCore
import NIOPosix
import NIOSSL

/// Commands written together and the promise of their replies, in order.
struct PipelineRequest: Sendable {
    var commands: [RedisCommand]
    var promise: EventLoopPromise<[RESPValue]>
}

/// Matches replies to pipelined requests, first in, first out. Confined to its channel's
/// event loop.
final class RedisPipelineHandler: ChannelDuplexHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = PipelineRequest
    typealias OutboundOut = ByteBuffer

    private struct Waiting {
        var remaining: Int
        var replies: [RESPValue]
        var promise: EventLoopPromise<[RESPValue]>
    }

    private var waiting = CircularBuffer<Waiting>()

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        guard !request.commands.isEmpty else {
            request.promise.succeed([])
            promise?.succeed(())
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: request.commands.reduce(0) { $0 + 16 + $1.arguments.reduce(0) { $0 + $1.count + 16 } })
        for c in request.commands { RESPEncoder.write(c, into: &buffer) }
        waiting.append(Waiting(remaining: request.commands.count, replies: [], promise: request.promise))
        context.write(wrapOutboundOut(buffer), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let value = unwrapInboundIn(data)
        guard !waiting.isEmpty else {
            // A reply nobody asked for: the stream is out of step; nothing on it can be trusted.
            failAll(.protocolViolation("a reply without a request"))
            context.close(promise: nil)
            return
        }
        waiting[waiting.startIndex].replies.append(value)
        waiting[waiting.startIndex].remaining -= 1
        if waiting[waiting.startIndex].remaining == 0 {
            let done = waiting.removeFirst()
            done.promise.succeed(done.replies)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(.connection("connection closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(error as? RedisError ?? .connection("\(error)"))
        context.close(promise: nil)
    }

    private func failAll(_ error: RedisError) {
        while let w = waiting.popFirst() { w.promise.fail(error) }
    }
}

/// One TCP connection to a node, with commands pipelined on it.
final class RedisConnection: Sendable {
    let channel: any Channel
    let address: RedisAddress

    private init(channel: any Channel, address: RedisAddress) {
        self.channel = channel
        self.address = address
    }

    var isActive: Bool { channel.isActive }

    /// Connects to `address` and authenticates (when credentials are configured).
    static func connect(to address: RedisAddress, configuration: RedisConfiguration, tls: NIOSSLContext?,
                        group: any EventLoopGroup, deadline: NIODeadline) -> EventLoopFuture<RedisConnection> {
        let limits = configuration.limits
        // SNI and name verification use the host name; an address literal is verified
        // against the certificate's IP addresses instead.
        let serverName = (try? SocketAddress(ipAddress: address.host, port: address.port)) == nil ? address.host : nil
        let remaining = max(deadline - .now(), .milliseconds(1))
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(remaining)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPDecoder(limits: limits)))
                    try channel.pipeline.syncOperations.addHandler(RedisPipelineHandler())
                }
            }
        // An address literal (what CLUSTER SLOTS returns) is connected to directly: NIO's
        // resolver runs getaddrinfo on Dispatch's global queue, where a busy process can keep
        // it waiting past any deadline. Host names go through the resolver.
        let channel: EventLoopFuture<any Channel>
        if let literal = try? SocketAddress(ipAddress: address.host, port: address.port) {
            channel = bootstrap.connect(to: literal)
        } else {
            channel = bootstrap.connect(host: address.host, port: address.port)
        }
        let connected = channel.map { RedisConnection(channel: $0, address: address) }
        guard let password = configuration.password else { return connected }
        let user = configuration.user
        return connected.flatMap { connection in
            let command = RedisCommand.auth(user: user, password: password)
            return connection.send([command], timeout: max(deadline - .now(), .milliseconds(1))).flatMapThrowing { replies in
                if let e = replies.first?.errorMessage {
                    connection.channel.close(promise: nil)
                    throw RedisError.authentication(e)
                }
                return connection
            }
        }
    }

    /// Writes `commands` as one pipeline; the replies arrive in order. When they have not all
    /// arrived `timeout` after the write reached the event loop, the future fails with
    /// ``RedisError/timeout(_:)`` and the connection is closed (its replies could no longer
    /// be matched to requests).
    func send(_ commands: [RedisCommand], timeout: TimeAmount) -> EventLoopFuture<[RESPValue]> {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: [RESPValue].self)
        let channel = self.channel
        let address = self.address
        loop.execute {
            let timer = loop.scheduleTask(in: timeout) {
                promise.fail(RedisError.timeout("\(address) did not reply in time"))
                channel.close(promise: nil)
            }
            promise.futureResult.whenComplete { _ in timer.cancel() }
            channel.writeAndFlush(PipelineRequest(commands: commands, promise: promise)).whenFailure { error in
                promise.fail(error as? RedisError ?? .connection("\(address): \(error)"))
            }
        }
        return promise.futureResult
    }

    func close() { channel.close(promise: nil) }
}

extension EventLoopFuture where Value: Sendable {
    /// The future's value, or ``RedisError/timeout(_:)`` once `deadline` passes.
    func value(before deadline: NIODeadline, _ what: @autoclosure () -> String) async throws(RedisError) -> Value {
        let promise = eventLoop.makePromise(of: Value.self)
        let description = what()
        let timer = eventLoop.scheduleTask(deadline: deadline) { promise.fail(RedisError.timeout(description)) }
        cascade(to: promise)
        promise.futureResult.whenComplete { _ in timer.cancel() }
        do { return try await promise.futureResult.get() } catch let e as RedisError { throw e } catch {
            throw .connection("\(description): \(error)")
        }
    }
}
