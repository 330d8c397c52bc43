import Foundation
import KVTCNumerics
import KVTCRedis
#if canImport(Glibc)
import Glibc
#endif

/// Settings of `kvtc bench shared-tier`.
public struct SharedTierConfiguration: Sendable {
    /// The `kvtc` executable to run as the two servers.
    public var executable: URL
    /// `--model` for the servers (nil: the default).
    public var model: String?
    /// The Redis deployment both servers share, and the CA trusted for `rediss://`.
    public var redisURL: String
    public var redisCA: String?
    /// Seconds of traffic.
    public var duration: Double = 120
    /// Concurrent clients.
    public var clients = 4
    /// Seconds into the run at which one master stops answering for ``stallSeconds``
    /// (`CLIENT PAUSE`: it accepts commands and holds them); nil: never.
    public var stallAfter: Double? = 20
    public var stallSeconds: Double = 5
    /// Seconds into the run at which another master is shut down (`SHUTDOWN NOSAVE`); nil: never.
    public var killAfter: Double? = 40
    /// Conversations, their turns, and tokens per reply.
    public var conversations = 8
    public var turns = 4
    public var replyTokens = 4
    /// Memory budget of each server (small: the cluster holds the conversations).
    public var memoryBudget = 16 << 20
    /// Where the servers' logs go.
    public var workDirectory: URL

    public init(executable: URL, redisURL: String, workDirectory: URL) {
        self.executable = executable
        self.redisURL = redisURL
        self.workDirectory = workDirectory
    }
}

/// A phase of the run: the nodes healthy, one stalled, one shut down.
public enum SharedTierPhase: String, Sendable, Codable, CaseIterable {
    case healthy, stalled, killed

    var severity: Int { SharedTierPhase.allCases.firstIndex(of: self)! }
}

/// What the requests of one phase saw.
public struct SharedTierPhaseRecord: Sendable, Codable {
    public var phase: SharedTierPhase
    public var requests: Int
    /// Of the prompt tokens of turns after a conversation's first, the fraction restored.
    public var cachedFraction: Double
    /// Seconds the server spent looking up and restoring (its `kvtc.restore_seconds`).
    public var restoreP50Seconds: Double
    public var restoreP95Seconds: Double
    public var restoreMaxSeconds: Double
    /// Request latency percentiles.
    public var latencyP50Seconds: Double
    public var latencyP95Seconds: Double

    enum CodingKeys: String, CodingKey {
        case phase, requests
        case cachedFraction = "cached_fraction", restoreP50Seconds = "restore_p50_seconds"
        case restoreP95Seconds = "restore_p95_seconds", restoreMaxSeconds = "restore_max_seconds"
        case latencyP50Seconds = "latency_p50_seconds", latencyP95Seconds = "latency_p95_seconds"
    }
}

/// What `kvtc bench shared-tier` measured.
public struct SharedTierReport: Sendable, Codable {
    public var seconds: Double
    public var topology: String
    public var requests: Int
    /// Requests not answered 200 (by status or `connection`).
    public var failed: Int
    public var failures: [String: Int]
    /// Turns after a conversation's first (each served by the other server than its
    /// previous turn), and those of them that restored tokens the other server had stored.
    public var crossServerTurns: Int
    public var crossServerRestores: Int
    /// The requests of each phase.
    public var phases: [SharedTierPhaseRecord]
    /// The master stalled and when (seconds into the run), and the one shut down.
    public var stalledNode: String?
    public var stalledAtSeconds: Double?
    public var killedNode: String?
    public var killedAtSeconds: Double?
    /// The servers' Redis read deadline.
    public var redisTimeoutSeconds: Double

    enum CodingKeys: String, CodingKey {
        case seconds, topology, requests, failed, failures, phases
        case crossServerTurns = "cross_server_turns", crossServerRestores = "cross_server_restores"
        case stalledNode = "stalled_node", stalledAtSeconds = "stalled_at_seconds"
        case killedNode = "killed_node", killedAtSeconds = "killed_at_seconds"
        case redisTimeoutSeconds = "redis_timeout_seconds"
    }
}

/// Errors of the shared-tier run.
public enum SharedTierError: Error, CustomStringConvertible {
    case serverDidNotStart(String)
    case redis(RedisError)

    public var description: String {
        switch self {
        case .serverDidNotStart(let m): return "a kvtc server did not start: \(m)"
        case .redis(let e): return "the Redis deployment is not usable: \(e)"
        }
    }
}

/// Two `kvtc serve --redis` processes on loopback sharing one deployment, clients whose
/// conversations alternate between them turn by turn (so every turn after the first is
/// served by the server that did not store the previous one), and one master shut down
/// mid-run.
public final class SharedTierRun: @unchecked Sendable {
    public let configuration: SharedTierConfiguration
    let log: @Sendable (String) -> Void

    private struct Sample {
        var seconds: Double
        var restoreSeconds: Double
        var phase: SharedTierPhase
        var crossServer: Bool
        var prompt: Int
        var cached: Int
    }

    private struct Stats {
        var samples: [Sample] = []
        var failures: [String: Int] = [:]
        var phase = SharedTierPhase.healthy
    }

    /// The servers' Redis read deadline (their default).
    static let redisTimeout = RedisConfiguration.defaultTimeout

    private let stats = Locked(Stats())

    public init(_ configuration: SharedTierConfiguration, log: @escaping @Sendable (String) -> Void) {
        self.configuration = configuration
        self.log = log
    }

    func startServer(port: Int, index: Int) throws -> Process {
        let p = Process()
        p.executableURL = configuration.executable
        var arguments = ["serve", "--host", "127.0.0.1", "--port", String(port), "--redis", configuration.redisURL,
                         "--memory-budget", String(configuration.memoryBudget), "--chunk-tokens", "64",
                         "--max-concurrent", "2", "--max-queue", "32", "--max-tokens-limit", "64"]
        if let m = configuration.model { arguments += ["--model", m] }
        if let ca = configuration.redisCA { arguments += ["--redis-ca", ca] }
        p.arguments = arguments
        let logURL = configuration.workDirectory.appendingPathComponent("server-\(index).log")
        FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let handle = try FileHandle(forWritingTo: logURL)
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        let deadline = Date().addingTimeInterval(600)
        while Date() < deadline {
            if !p.isRunning { throw SharedTierError.serverDidNotStart("exited with status \(p.terminationStatus); see \(logURL.path)") }
            if let r = try? LoopbackHTTP.exchange(port: port, method: "GET", path: "/health", timeout: 2), r.status == 200 { return p }
            usleep(200_000)
        }
        throw SharedTierError.serverDidNotStart("no /health answer; see \(logURL.path)")
    }

    /// One client: its conversations, turn by turn, alternating servers, each repetition
    /// under a fresh `cache_salt` (so a turn's prefix can only come from the other server).
    func client(_ index: Int, ports: [Int], users: [[String]], until end: Date) {
        let mine = Array(stride(from: index, to: users.count, by: configuration.clients))
        guard !mine.isEmpty else { return }
        var repetition = 0
        while Date() < end {
            for c in mine {
                var history: [[String: String]] = []
                let salt = "client\(index)-rep\(repetition)-conv\(c)"
                for (t, text) in users[c].enumerated() where Date() < end {
                    history.append(["role": "user", "content": text])
                    let port = ports[(c + t + repetition) % 2]
                    let body: [String: Any] = ["messages": history, "max_tokens": configuration.replyTokens, "temperature": 0,
                                               "cache_salt": salt]
                    let phase = stats.withLock { $0.phase }
                    let clock = Date()
                    var reply = ""
                    do {
                        let r = try LoopbackHTTP.json(port: port, path: "/v1/chat/completions", key: nil, object: body, timeout: 60)
                        let seconds = Date().timeIntervalSince(clock)
                        guard r.status == 200 else {
                            stats.withLock { $0.failures[String(r.status), default: 0] += 1 }
                            continue
                        }
                        let usage = r.json?["usage"] as? [String: Any]
                        let prompt = usage?["prompt_tokens"] as? Int ?? 0
                        let cached = (usage?["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int ?? 0
                        reply = ((r.json?["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String ?? ""
                        let restore = (r.json?["kvtc"] as? [String: Any])?["restore_seconds"] as? Double ?? 0
                        stats.withLock {
                            // A request that saw a fault, at its start or its end, counts in that phase.
                            let seen = [phase, $0.phase].max { $0.severity < $1.severity }!
                            $0.samples.append(Sample(seconds: seconds, restoreSeconds: restore, phase: seen,
                                                     crossServer: t > 0, prompt: prompt, cached: cached))
                        }
                    } catch {
                        stats.withLock { $0.failures["connection", default: 0] += 1 }
                    }
                    history.append(["role": "assistant", "content": reply])
                }
            }
            repetition += 1
        }
    }

    static func connect(_ url: String, ca: String?) async throws(SharedTierError) -> (RedisClient, RedisTopology) {
        do throws(RedisError) {
            let redis = try RedisClient(configuration: try RedisConfiguration(url: url, timeout: 1, tlsCAFile: ca))
            return (redis, try await redis.connect())
        } catch {
            throw .redis(error)
        }
    }

    public func run() async throws -> SharedTierReport {
        try FileManager.default.createDirectory(at: configuration.workDirectory, withIntermediateDirectories: true)
        let (redis, topology) = try await Self.connect(configuration.redisURL, ca: configuration.redisCA)
        log("shared tier: \(topology)")
        let ports = [FaultHarness.freePort(), FaultHarness.freePort()]
        var servers: [Process] = []
        defer { for s in servers where s.isRunning { kill(s.processIdentifier, SIGTERM); s.waitUntilExit() } }
        for (i, port) in ports.enumerated() {
            log("starting server \(i + 1) on port \(port)")
            servers.append(try startServer(port: port, index: i))
        }
        let users = FaultHarness.userMessages(conversations: configuration.conversations, turns: configuration.turns,
                                              seed: UInt64(Date().timeIntervalSince1970))
        let start = Date()
        let end = start.addingTimeInterval(configuration.duration)
        let group = DispatchGroup()
        for c in 0..<configuration.clients {
            group.enter()
            Thread.detachNewThread { [self] in
                client(c, ports: ports, users: users, until: end)
                group.leave()
            }
        }
        var killed: (String, Double)?, stalled: (String, Double)?
        let masters = redis.masters
        while Date() < end {
            try await Task.sleep(nanoseconds: 250_000_000)
            let now = Date().timeIntervalSince(start)
            if stalled == nil, let after = configuration.stallAfter, now >= after, let victim = masters.last {
                // The node keeps its connections and accepts commands but answers none.
                let ms = String(Int(configuration.stallSeconds * 1000))
                _ = try? await redis.send(RedisCommand(["CLIENT", "PAUSE", ms, "ALL"]), to: victim, timeout: 2)
                stalled = (victim.description, now)
                stats.withLock { $0.phase = .stalled }
                log("master \(victim) stalled for \(configuration.stallSeconds) s at \(Int(now)) s")
            }
            if let s = stalled, now >= s.1 + configuration.stallSeconds, stats.withLock({ $0.phase == .stalled }) {
                stats.withLock { $0.phase = .healthy }
            }
            if killed == nil, let after = configuration.killAfter, now >= after, let victim = masters.first {
                _ = try? await redis.send(RedisCommand(["SHUTDOWN", "NOSAVE"]), to: victim, timeout: 2)
                killed = (victim.description, now)
                stats.withLock { $0.phase = .killed }
                log("shut down master \(victim) at \(Int(now)) s")
            }
            let n = stats.withLock { $0.samples.count }
            log(String(format: "%.0f s: %d requests answered", Date().timeIntervalSince(start), n))
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in group.notify(queue: .global()) { c.resume() } }
        let s = stats.withLock { $0 }
        func record(_ phase: SharedTierPhase) -> SharedTierPhaseRecord {
            let samples = s.samples.filter { $0.phase == phase }
            let cross = samples.filter(\.crossServer)
            let prompt = cross.reduce(0) { $0 + $1.prompt }
            let restores = samples.map(\.restoreSeconds), latencies = samples.map(\.seconds)
            return SharedTierPhaseRecord(phase: phase, requests: samples.count,
                                         cachedFraction: prompt == 0 ? 0 : Double(cross.reduce(0) { $0 + $1.cached }) / Double(prompt),
                                         restoreP50Seconds: ServingBenchmark.percentile(restores, 0.5),
                                         restoreP95Seconds: ServingBenchmark.percentile(restores, 0.95),
                                         restoreMaxSeconds: restores.max() ?? 0,
                                         latencyP50Seconds: ServingBenchmark.percentile(latencies, 0.5),
                                         latencyP95Seconds: ServingBenchmark.percentile(latencies, 0.95))
        }
        let failed = s.failures.values.reduce(0, +)
        return SharedTierReport(seconds: Date().timeIntervalSince(start), topology: "\(topology)",
                                requests: s.samples.count + failed, failed: failed, failures: s.failures,
                                crossServerTurns: s.samples.filter(\.crossServer).count,
                                crossServerRestores: s.samples.filter { $0.crossServer && $0.cached > 0 }.count,
                                phases: SharedTierPhase.allCases.map(record),
                                stalledNode: stalled?.0, stalledAtSeconds: stalled?.1,
                                killedNode: killed?.0, killedAtSeconds: killed?.1, redisTimeoutSeconds: Self.redisTimeout)
    }
}
