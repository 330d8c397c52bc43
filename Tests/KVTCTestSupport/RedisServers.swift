import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why a Redis server for a test could not be had. A missing binary is an error, never a
/// skip: `scripts/test.sh` installs Debian's `redis-server` and `redis-tools`.
public struct RedisServerError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A real `redis-server` process on loopback, started and stopped by a test.
public final class RedisServer: @unchecked Sendable {
    /// Its TCP port.
    public let port: Int
    /// Its working directory (cluster state, logs).
    public let directory: URL
    private let arguments: [String]
    /// The `timeout` process the server runs under, and the server's own pid (signals go to it).
    private var process: Process?
    private var serverPID: Int32?

    /// Finds `name` on PATH (and in /usr/bin, /usr/sbin).
    public static func executable(_ name: String) throws -> String {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/bin:/usr/sbin:/usr/local/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw RedisServerError("\(name) not found: install Debian's redis-server and redis-tools (scripts/test.sh does)")
    }

    /// A port `p` such that `p` and `p + 10000` (a cluster node's bus) are free on loopback.
    public static func freePort() -> Int {
        for _ in 0..<200 {
            let p = Int.random(in: 16000...26000)
            if isFree(p), isFree(p + 10000) { return p }
        }
        return Int.random(in: 16000...26000)
    }

    static func isFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// Files of a test certificate authority and a server certificate for 127.0.0.1 signed
    /// by it (made with the `openssl` command).
    public struct TLSFiles: Sendable {
        public var caCertificate: String
        public var certificate: String
        public var key: String

        /// Makes a CA and a server certificate (IP 127.0.0.1, DNS localhost) in `directory`.
        public static func make(in directory: URL) throws -> TLSFiles {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let openssl = try RedisServer.executable("openssl")
            func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
            try Data("subjectAltName=IP:127.0.0.1,DNS:localhost\n".utf8).write(to: directory.appendingPathComponent("san.cnf"))
            for args in [["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", path("ca.key"), "-out", path("ca.crt"),
                          "-days", "2", "-subj", "/CN=kvtc test CA"],
                         ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", path("server.key"), "-out", path("server.csr"),
                          "-subj", "/CN=localhost"],
                         ["x509", "-req", "-in", path("server.csr"), "-CA", path("ca.crt"), "-CAkey", path("ca.key"),
                          "-CAcreateserial", "-out", path("server.crt"), "-days", "2", "-extfile", path("san.cnf")]] {
                _ = try RedisServer.run(openssl, args)
            }
            guard FileManager.default.fileExists(atPath: path("server.crt")) else {
                throw RedisServerError("openssl did not make the test certificates in \(directory.path)")
            }
            return TLSFiles(caCertificate: path("ca.crt"), certificate: path("server.crt"), key: path("server.key"))
        }
    }

    /// How `redis-cli` reaches the server (TLS options included).
    private let cliOptions: [String]

    /// Starts a server on a free port with `configuration` (`redis-server` flags without
    /// the dashes' values quoted, e.g. `["cluster-enabled", "yes"]` pairs); with `tls`, the
    /// port speaks TLS only.
    public init(configuration: [String] = [], port: Int? = nil, tls: TLSFiles? = nil) throws {
        self.port = port ?? Self.freePort()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("kvtc-redis-\(self.port)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var listen = ["--port", String(self.port)]
        var cli = ["-h", "127.0.0.1", "-p", String(self.port)]
        if let tls {
            listen = ["--port", "0", "--tls-port", String(self.port), "--tls-cert-file", tls.certificate,
                      "--tls-key-file", tls.key, "--tls-ca-cert-file", tls.caCertificate, "--tls-auth-clients", "no"]
            cli += ["--tls", "--cacert", tls.caCertificate]
        }
        cliOptions = cli
        arguments = listen + ["--bind", "127.0.0.1", "--dir", directory.path, "--save", "",
                     "--appendonly", "no", "--daemonize", "no", "--logfile", "redis.log",
                     "--pidfile", directory.appendingPathComponent("redis.pid").path] + configuration
        try start()
    }

    /// Seconds after which a server is killed even if the test process that started it died
    /// without stopping it (a crash skips `deinit`).
    public static let lifetime = 900

    /// Starts (or restarts, with the same directory and port) the process and waits until it
    /// answers `PING`. It runs under `timeout`, so an orphan does not outlive ``lifetime``.
    public func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try Self.executable("timeout"))
        p.arguments = ["-s", "KILL", String(Self.lifetime), try Self.executable("redis-server")] + arguments
        p.currentDirectoryURL = directory
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            // PONG, or a refusal to an unauthenticated client: either way it is up.
            if let reply = try? cli(["ping"]), ["PONG", "NOAUTH", "NOPERM"].contains(where: reply.contains) {
                serverPID = (try? String(contentsOf: directory.appendingPathComponent("redis.pid"), encoding: .utf8))
                    .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
                return
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw RedisServerError("redis-server on port \(port) did not start; see \(directory.path)/redis.log")
    }

    /// Runs `redis-cli -p PORT args...` and returns what it printed.
    @discardableResult
    public func cli(_ args: [String]) throws -> String {
        try Self.run(try Self.executable("redis-cli"), cliOptions + args)
    }

    /// Runs `executable` with `args` and returns what it printed (stdout and stderr).
    public static func run(_ executable: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    /// The server's process id, while it runs.
    public var pid: Int32? { process == nil ? nil : serverPID }

    /// Kills the server (SIGKILL) and waits for it to go.
    public func kill() {
        guard let p = process, p.isRunning else { return }
        if let serverPID { Glibc.kill(serverPID, SIGKILL) }
        p.waitUntilExit()
        process = nil
        serverPID = nil
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: a node that accepts connections but
    /// never answers.
    public func pause(_ paused: Bool) {
        guard process != nil, let serverPID else { return }
        Glibc.kill(serverPID, paused ? SIGSTOP : SIGCONT)
    }

    deinit {
        if let p = process, p.isRunning {
            if let serverPID {
                Glibc.kill(serverPID, SIGCONT)
                Glibc.kill(serverPID, SIGKILL)
            }
            Glibc.kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: directory)
    }
}

/// A Redis Cluster of `masters` masters (and `replicas` replicas of each) on loopback, made
/// with `redis-cli --cluster create`.
public final class RedisClusterServers: @unchecked Sendable {
    /// The nodes, in the order their slots were assigned.
    public let nodes: [RedisServer]

    /// Starts the nodes and joins them; returns when every node reports `cluster_state:ok`.
    /// A master that goes down does not stop the others serving their slots
    /// (`cluster-require-full-coverage no`).
    public init(masters: Int = 3, replicas: Int = 0, nodeTimeoutMilliseconds: Int = 1000) throws {
        var nodes: [RedisServer] = []
        for _ in 0..<(masters * (1 + replicas)) {
            nodes.append(try RedisServer(configuration: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                                         "--cluster-node-timeout", String(nodeTimeoutMilliseconds),
                                                         "--cluster-require-full-coverage", "no"]))
        }
        self.nodes = nodes
        let output = try RedisServer.run(try RedisServer.executable("redis-cli"),
                                         ["--cluster", "create"] + nodes.map { "127.0.0.1:\($0.port)" }
                                             + ["--cluster-replicas", String(replicas), "--cluster-yes"])
        guard output.contains("All 16384 slots covered") else {
            throw RedisServerError("redis-cli --cluster create failed:\n\(output)")
        }
        try waitUntilHealthy()
    }

    /// Waits until every running node reports `cluster_state:ok` and knows all masters.
    public func waitUntilHealthy(timeout: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let ok = nodes.filter { $0.pid != nil }.allSatisfy { n in
                guard let info = try? n.cli(["cluster", "info"]) else { return false }
                return info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:\(nodes.count)")
            }
            if ok { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw RedisServerError("the cluster did not become healthy in \(timeout) s")
    }

    /// The seed URL of the cluster (`redis://127.0.0.1:P1,127.0.0.1:P2,...`).
    public var url: String { "redis://" + nodes.map { "127.0.0.1:\($0.port)" }.joined(separator: ",") }

    /// A node's cluster id.
    public func id(of node: RedisServer) throws -> String {
        try node.cli(["cluster", "myid"]).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
