/// A node's address.
public struct RedisAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// How to reach and use a Redis deployment: seed nodes, credentials and time limits.
///
/// Parsed from `redis://[user:password@]host:port[,host:port...]`: one address is a
/// standalone node or a cluster seed (the client finds out which), several are cluster
/// seeds. A password alone (`redis://:password@host`) authenticates as the default user.
/// `rediss://` connects with TLS, verifying the server's certificate against ``tlsCAFile``
/// (PEM) or the system's roots, and its name or IP address.
public struct RedisConfiguration: Sendable, Equatable {
    /// The nodes first asked for the topology (or the one standalone node).
    public var seeds: [RedisAddress]
    /// ACL user name, if any.
    public var user: String?
    /// Password, if any.
    public var password: String?
    /// Deadline of one operation (connect and reply together), in seconds.
    public var timeout: Double
    /// Connections kept per node; commands are pipelined on each.
    public var connectionsPerNode: Int
    /// First wait after a node failed, doubled per failure up to ``maxBackoff``.
    public var initialBackoff: Double
    /// Longest wait before a failed node is tried again.
    public var maxBackoff: Double
    /// Limits on replies.
    public var limits: RESPLimits
    /// Whether connections use TLS (`rediss://`).
    public var tls: Bool
    /// Certificate authorities (PEM) trusted for TLS; `nil`: the system's.
    public var tlsCAFile: String?

    /// The default time limit of a step (connecting, an exchange): small, so that a node
    /// that is down or slow costs a request little.
    public static let defaultTimeout = 0.05

    public init(seeds: [RedisAddress], user: String? = nil, password: String? = nil, timeout: Double = defaultTimeout,
                connectionsPerNode: Int = 2, initialBackoff: Double = 0.1, maxBackoff: Double = 2,
                limits: RESPLimits = RESPLimits(), tls: Bool = false, tlsCAFile: String? = nil) {
        self.tls = tls
        self.tlsCAFile = tlsCAFile
        self.seeds = seeds
        self.user = user
        self.password = password
        self.timeout = timeout
        self.connectionsPerNode = max(1, connectionsPerNode)
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.limits = limits
    }

    /// Parses `redis[s]://[user:password@]host[:port][,host[:port]...]` (port 6379 by default).
    public init(url: String, timeout: Double = defaultTimeout, tlsCAFile: String? = nil) throws(RedisError) {
        let tls = url.hasPrefix("rediss://")
        let scheme = tls ? "rediss://" : "redis://"
        guard url.hasPrefix(scheme) else { throw .invalidURL("\(url) does not start with redis:// or rediss://") }
        if tlsCAFile != nil && !tls { throw .invalidURL("a TLS CA file was given for \(url), which is not rediss://") }
        var rest = Substring(url.dropFirst(scheme.count))
        if let slash = rest.firstIndex(of: "/") {
            let path = rest[rest.index(after: slash)...]
            guard path.isEmpty || path == "0" else {
                throw .invalidURL("database \(path) is not supported (a cluster has only database 0)")
            }
            rest = rest[..<slash]
        }
        var user: String?, password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                let u = String(credentials[..<colon])
                user = u.isEmpty ? nil : try Self.unescape(u)
                password = try Self.unescape(String(credentials[credentials.index(after: colon)...]))
            } else {
                password = try Self.unescape(String(credentials))
            }
        }
        var seeds: [RedisAddress] = []
        for part in rest.split(separator: ",", omittingEmptySubsequences: false) {
            seeds.append(try Self.address(String(part)))
        }
        guard !seeds.isEmpty else { throw .invalidURL("no host in \(url)") }
        self.init(seeds: seeds, user: user, password: password, timeout: timeout, tls: tls, tlsCAFile: tlsCAFile)
    }

    static func address(_ text: String) throws(RedisError) -> RedisAddress {
        var host = Substring(text), port = 6379
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw .invalidURL("unclosed [ in \(text)") }
            let after = host[host.index(after: close)...]
            let h = host[host.index(after: host.startIndex)..<close]
            if !after.isEmpty {
                guard after.first == ":", let p = Int(after.dropFirst()) else { throw .invalidURL("bad port in \(text)") }
                port = p
            }
            host = h
        } else if let colon = host.lastIndex(of: ":") {
            guard let p = Int(host[host.index(after: colon)...]) else { throw .invalidURL("bad port in \(text)") }
            port = p
            host = host[..<colon]
        }
        guard !host.isEmpty else { throw .invalidURL("empty host in \(text)") }
        guard (1...65535).contains(port) else { throw .invalidURL("port \(port) out of range") }
        return RedisAddress(host: String(host), port: port)
    }

    static func unescape(_ s: String) throws(RedisError) -> String {
        guard s.contains("%") else { return s }
        guard let decoded = s.removingPercentEncodingForRedis else { throw .invalidURL("bad percent escape in credentials") }
        return decoded
    }
}

extension String {
    /// Decodes `%XX` escapes (credentials may hold `@`, `:` or `,`).
    fileprivate var removingPercentEncodingForRedis: String? {
        var out: [UInt8] = []
        var bytes = Array(utf8)[...]
        while let b = bytes.popFirst() {
            guard b == UInt8(ascii: "%") else { out.append(b); continue }
            guard bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) else { return nil }
            out.append(v)
            bytes = bytes.dropFirst(2)
        }
        return String(validating: out, as: UTF8.self)
    }
}
