/// Why a Redis operation failed.
public enum RedisError: Error, Equatable, CustomStringConvertible {
    /// The address could not be parsed.
    case invalidURL(String)
    /// Connecting failed or the connection broke.
    case connection(String)
    /// The operation did not finish before its deadline.
    case timeout(String)
    /// The node is in its back-off after failures; not tried.
    case unavailable(String)
    /// AUTH was refused.
    case authentication(String)
    /// The server replied with an error.
    case server(String)
    /// The server sent something that is not RESP, or over the limits.
    case protocolViolation(String)
    /// Redirections did not settle on a node (MOVED or ASK loops, or slots with no node).
    case redirection(String)
    /// The TLS settings could not be used (an unreadable CA file).
    case tls(String)

    public var description: String {
        switch self {
        case .invalidURL(let m): return "invalid Redis URL: \(m)"
        case .connection(let m): return "Redis connection failed: \(m)"
        case .timeout(let m): return "Redis timed out: \(m)"
        case .unavailable(let m): return "Redis node unavailable (backing off): \(m)"
        case .authentication(let m): return "Redis refused the credentials: \(m)"
        case .server(let m): return "Redis error: \(m)"
        case .protocolViolation(let m): return "Redis protocol violation: \(m)"
        case .redirection(let m): return "Redis cluster redirection failed: \(m)"
        case .tls(let m): return "Redis TLS: \(m)"
        }
    }
}
