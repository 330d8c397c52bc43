import Hummingbird
import KVTCNumerics
import Logging
import NIOCore

/// Whether a client connection is still there: set once the client closes its side or the
/// connection drops, so a request can stop generating for a client that left.
public final class ConnectionLiveness: Sendable {
    private let closed = Locked(false)

    public init() {}

    /// Whether the client has gone away.
    public var isClosed: Bool { closed.current }

    func markClosed() { closed.withLock { $0 = true } }
}

/// The liveness of every open connection, by channel.
final class ConnectionRegistry: Sendable {
    static let shared = ConnectionRegistry()
    private let table = Locked([ObjectIdentifier: ConnectionLiveness]())

    func register(_ channel: any Channel) -> ConnectionLiveness {
        let liveness = ConnectionLiveness()
        table.withLock { $0[ObjectIdentifier(channel)] = liveness }
        return liveness
    }

    func liveness(of channel: any Channel) -> ConnectionLiveness? { table.withLock { $0[ObjectIdentifier(channel)] } }

    func close(_ channel: any Channel) {
        table.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) }?.markClosed()
    }
}

/// Watches one connection for the client going away: the end of its input (the server
/// allows half-closure, so a client that closes its socket shows up as input closed) or
/// the connection becoming inactive.
final class DisconnectWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private var liveness: ConnectionLiveness?

    func handlerAdded(context: ChannelHandlerContext) {
        liveness = ConnectionRegistry.shared.register(context.channel)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        ConnectionRegistry.shared.close(context.channel)
    }

    func channelInactive(context: ChannelHandlerContext) {
        ConnectionRegistry.shared.close(context.channel)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed { liveness?.markClosed() }
        context.fireUserInboundEventTriggered(event)
    }
}

/// The request context of the server's routes: the framework's core context plus the
/// liveness of the request's connection.
public struct ServerRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The connection's liveness (`nil` outside a real server, e.g. in router tests).
    public let connection: ConnectionLiveness?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        connection = ConnectionRegistry.shared.liveness(of: source.channel)
    }

    /// Whether the client has gone away.
    public var clientGone: Bool { connection?.isClosed ?? false }
}
