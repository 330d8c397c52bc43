import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore

/// Where and how the server listens.
public struct ServerConfiguration: Sendable {
    /// Interface to bind (default `127.0.0.1`).
    public var host: String
    /// TCP port (0 picks a free one).
    public var port: Int

    public init(host: String = "127.0.0.1", port: Int = 8080) {
        self.host = host
        self.port = port
    }
}

/// The OpenAI-compatible HTTP server that restores caches instead of recomputing them.
public enum KVTCServer {
    /// An application serving `service` (run it with `runService()`).
    ///
    /// - Parameter onServerRunning: called with the bound port once the server listens.
    public static func application(service: KVTCService, configuration: ServerConfiguration,
                                   logger: Logger? = nil,
                                   onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }) -> some ApplicationProtocol {
        var log = logger ?? Logger(label: "kvtc.server")
        if logger == nil { log.logLevel = .warning }
        // Idle connections, and requests whose bytes stop arriving, are closed after the idle
        // timeout; a watcher per connection notices clients that go away.
        let http1 = HTTP1Channel.Configuration(
            additionalChannelHandlers: [DisconnectWatcher()],
            idleTimeout: .milliseconds(Int64(service.limits.idleTimeout * 1000)))
        return Application(router: Routes.router(for: service),
                           server: .http1(configuration: http1),
                           configuration: .init(address: .hostname(configuration.host, port: configuration.port),
                                                serverName: "kvtc"),
                           onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? configuration.port) },
                           logger: log)
    }
}
