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
    /// The Redis deployment both servers share.
    public var redisURL: String
    /// Seconds of traffic.
    public var duration: Double = 120
    /// Concurrent clients.
    public var clients = 4
    /// Seconds into the run at which one master is shut down (`SHUTDOWN NOSAVE`); nil: never.
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
    /// Of the prompt tokens of those turns, the fraction restored; before and after the kill.
    public var cachedFractionBeforeKill: Double
    public var cachedFractionAfterKill: Double
    /// The master shut down, and when (seconds into the run).
    public var killedNode: String?
    public var killedAtSeconds: Double?
    /// Request latency percentiles (seconds), before and after the kill.
    public var p50Seconds: Double
    public var p95Seconds: Double
    public var p95AfterKillSeconds: Double

    enum CodingKeys: String, CodingKey {
        case seconds, topology, requests, failed, failures
        case crossServerTurns = "cross_server_turns", crossServerRestores = "cross_server_restores"
        case cachedFractionBeforeKill = "cached_fraction_before_kill", cachedFractionAfterKill = "cached_fraction_after_kill"
        case killedNode = "killed_node", killedAtSeconds = "killed_at_seconds"
        case p50Seconds = "p50_seconds", p95Seconds = "p95_seconds", p95AfterKillSeconds = "p95_after_kill_seconds"
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
        var afterKill: Bool
        var crossServer: Bool
        var prompt: Int
        var cached: Int
    }

    private struct Stats {
        var samples: [Sample] = []
        var failures: [String: Int] = [:]
        var killed = false
    }

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
                    let afterKill = stats.withLock { $0.killed }
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
                        stats.withLock {
                            $0.samples.append(Sample(seconds: seconds, afterKill: afterKill, crossServer: t > 0, prompt: prompt, cached: cached))
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

    static func connect(_ url: String) async throws(SharedTierError) -> (RedisClient, RedisTopology) {
        do throws(RedisError) {
            let redis = RedisClient(configuration: try RedisConfiguration(url: url, timeout: 1))
            return (redis, try await redis.connect())
        } catch {
            throw .redis(error)
        }
    }

    public func run() async throws -> SharedTierReport {
        try FileManager.default.createDirectory(at: configuration.workDirectory, withIntermediateDirectories: true)
        let (redis, topology) = try await Self.connect(configuration.redisURL)
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
        var killed: (String, Double)?
        while Date() < end {
            try await Task.sleep(nanoseconds: 500_000_000)
            if killed == nil, let after = configuration.killAfter, Date().timeIntervalSince(start) >= after,
               let victim = redis.masters.first {
                _ = try? await redis.send(RedisCommand(["SHUTDOWN", "NOSAVE"]), to: victim, timeout: 2)
                killed = (victim.description, Date().timeIntervalSince(start))
                stats.withLock { $0.killed = true }
                log("shut down master \(victim) at \(Int(killed!.1)) s")
            }
            let n = stats.withLock { $0.samples.count }
            log(String(format: "%.0f s: %d requests answered", Date().timeIntervalSince(start), n))
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in group.notify(queue: .global()) { c.resume() } }
        let s = stats.withLock { $0 }
        func fraction(_ samples: [Sample]) -> Double {
            let cross = samples.filter(\.crossServer)
            let prompt = cross.reduce(0) { $0 + $1.prompt }
            return prompt == 0 ? 0 : Double(cross.reduce(0) { $0 + $1.cached }) / Double(prompt)
        }
        let before = s.samples.filter { !$0.afterKill }, after = s.samples.filter(\.afterKill)
        let failed = s.failures.values.reduce(0, +)
        return SharedTierReport(seconds: Date().timeIntervalSince(start), topology: "\(topology)",
                                requests: s.samples.count + failed, failed: failed, failures: s.failures,
                                crossServerTurns: s.samples.filter(\.crossServer).count,
                                crossServerRestores: s.samples.filter { $0.crossServer && $0.cached > 0 }.count,
                                cachedFractionBeforeKill: fraction(before), cachedFractionAfterKill: fraction(after),
                                killedNode: killed?.0, killedAtSeconds: killed?.1,
                                p50Seconds: ServingBenchmark.percentile(s.samples.map(\.seconds), 0.5),
                                p95Seconds: ServingBenchmark.percentile(before.map(\.seconds), 0.95),
                                p95AfterKillSeconds: ServingBenchmark.percentile(after.map(\.seconds), 0.95))
    }
}
