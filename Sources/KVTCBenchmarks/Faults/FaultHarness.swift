import Foundation
import KVTCGGUF
import KVTCModels
import KVTCNumerics
import KVTCStore
import KVTCTokenizers
#if canImport(Glibc)
import Glibc
#endif

/// Settings of `kvtc bench faults`.
public struct FaultHarnessConfiguration: Sendable {
    /// The `kvtc` executable to run as the server.
    public var executable: URL
    /// `--model` for the server (a catalog name or a GGUF path; nil: the default).
    public var model: String?
    /// Seconds of traffic.
    public var duration: Double = 720
    /// Concurrent client threads (besides the `/health` prober).
    public var clients = 3
    /// SIGKILLs of the server, spread over the run.
    public var kills = 6
    /// Seed of every random choice.
    public var seed: UInt64 = 2026
    /// Byte budget of the server's memory tier.
    public var memoryBudget = 256 << 20
    /// Conversations replayed, and their turns.
    public var conversations = 16
    public var turns = 3
    /// Tokens per reply.
    public var replyTokens = 6
    /// Fraction of client actions that are hostile.
    public var hostileFraction = 0.6
    /// How the server stores chunks: `exact` (f32; a correct restore answers exactly as
    /// recomputing, so every difference is a wrong answer) or `kvtc` (the product's lossy
    /// codec; differences from recomputing are reported, not counted as wrong).
    public var cacheCodec = "exact"
    /// Where the server's keys, secret, disk tier and log go.
    public var workDirectory: URL

    public init(executable: URL, workDirectory: URL) {
        self.executable = executable
        self.workDirectory = workDirectory
    }
}

/// Requests of one class, by outcome.
public struct RequestClassRecord: Sendable, Codable {
    public var name: String
    public var hostile: Bool
    /// Outcomes: an HTTP status code, `down` (refused or cut by an injected kill) or
    /// `broken` (the connection failed while the server was up).
    public var outcomes: [String: Int] = [:]
    public var total: Int { outcomes.values.reduce(0, +) }
}

/// What `kvtc bench faults` measured.
public struct FaultReport: Sendable, Codable {
    public var seconds: Double
    public var requests: Int
    public var hostileRequests: Int
    public var classes: [RequestClassRecord]
    /// Valid chat turns whose reply differed from the turn recomputed from scratch.
    public var wrongAnswers: Int
    /// Chat turns compared with their reference.
    public var comparedTurns: Int
    /// With a lossy codec: turns whose reply differed from recomputing (not counted as wrong).
    public var lossyDivergences: Int
    /// The codec of the server's store.
    public var cacheCodec: String
    /// Requests that saw another namespace's entries (cached tokens, lookups, reads).
    public var crossTenantHits: Int
    /// Server exits the harness did not cause.
    public var crashes: Int
    /// SIGKILLs the harness injected.
    public var kills: Int
    /// 5xx answers to valid requests.
    public var serverErrorsOnValid: Int
    /// 5xx answers to hostile requests.
    public var serverErrorsOnHostile: Int
    /// Entry files the harness flipped bits in, truncated or deleted.
    public var filesDamaged: Int
    public var validLatencyP50: Double
    public var validLatencyP99: Double
    public var healthLatencyP50: Double
    public var healthLatencyP99: Double
    /// Peak resident set of the server (any incarnation), bytes.
    public var peakRSSBytes: Int
    /// The model's weights as the server holds them (f32), bytes.
    public var modelBytes: Int
    /// Model weights + memory budget + 512 MiB.
    public var rssLimitBytes: Int
    /// Examples of wrong answers, crashes and cross-tenant hits (for the log).
    public var incidents: [String]
    /// The `invalid entries` counters of the last incarnation, by reason.
    public var invalidEntriesByReason: [String: Double]
}

/// The fault harness: a real `kvtc serve` on loopback under valid multi-turn chats whose
/// every reply is checked against the same turn recomputed from scratch, hostile requests,
/// SIGKILLs and damage to its disk tier.
///
/// Unchecked-Sendable: `turns`, `port` and `stopAt` are set by ``run(model:)`` before its
/// threads start and only read after; everything the threads share is behind `Locked`.
public final class FaultHarness: @unchecked Sendable {
    let configuration: FaultHarnessConfiguration
    let log: @Sendable (String) -> Void

    // Keys of the run (written to the key file).
    let aliceKey = "fault-alice-" + FaultHarness.randomHex(16)
    let bobKey = "fault-bob-" + FaultHarness.randomHex(16)
    let malloryKey = "fault-mallory-" + FaultHarness.randomHex(16)
    let adminKey = "fault-admin-" + FaultHarness.randomHex(16)
    let secret = Array(FaultHarness.randomHex(32).utf8)

    /// A conversation turn and the reply recomputed from scratch.
    struct Turn: Sendable {
        var messages: [[String: String]]
        var reply: String
    }

    private var turns: [[Turn]] = []
    private var port = 0
    private let server = Locked<ServerState>(ServerState())
    private let stats = Locked<Stats>(Stats())
    private var stopAt = Date.distantFuture

    struct ServerState {
        var process: Process?
        var epoch = 0
        var up = false
        var killedByUs = Set<Int32>()
        var crashes = 0
        var kills = 0
        var peakRSS = 0
    }

    struct Stats {
        var classes: [String: RequestClassRecord] = [:]
        var wrong = 0
        var lossyDivergences = 0
        var compared = 0
        var crossTenant = 0
        var fiveOnValid = 0
        var fiveOnHostile = 0
        var validLatency: [Double] = []
        var healthLatency: [Double] = []
        var damaged = 0
        var incidents: [String] = []
    }

    public init(_ configuration: FaultHarnessConfiguration, log: @escaping @Sendable (String) -> Void) {
        self.configuration = configuration
        self.log = log
    }

    static func randomHex(_ bytes: Int) -> String {
        (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }

    // MARK: Workload

    /// User messages of every conversation: short questions built from a fixed vocabulary,
    /// different from the first word on so that conversations share no chunk.
    static func userMessages(conversations: Int, turns: Int, seed: UInt64) -> [[String]] {
        let subjects = ["rivers", "volcanoes", "bridges", "comets", "forests", "deserts", "glaciers", "harbors", "islands",
                        "lighthouses", "mountains", "oceans", "planets", "railways", "satellites", "tides", "tunnels", "winds"]
        let asks = ["Explain briefly how", "Tell me one fact about how", "In one sentence, describe how", "Why do"]
        let verbs = ["change over time", "affect the weather", "are measured", "are named", "help travellers", "form"]
        var rng = SplitMix64(seed: seed)
        func pick(_ a: [String]) -> String { a[Int(rng.next() % UInt64(a.count))] }
        return (0..<conversations).map { c in
            (0..<turns).map { t in "Question \(c)-\(t): \(pick(asks)) \(pick(subjects)) \(pick(verbs))?" }
        }
    }

    /// Computes every turn's reference reply with the model, from scratch, greedy.
    func prepare(model: any LanguageModel) throws {
        let users = Self.userMessages(conversations: configuration.conversations, turns: configuration.turns, seed: configuration.seed)
        turns = []
        for (c, messages) in users.enumerated() {
            var history: [[String: String]] = []
            var out: [Turn] = []
            for text in messages {
                history.append(["role": "user", "content": text])
                let chat = history.map { ChatMessage(role: ChatRole(rawValue: $0["role"]!)!, content: $0["content"]!) }
                let prompt = model.chatPromptTokens(chat)
                var cache = model.makeCache(reservingCapacity: prompt.count + configuration.replyTokens)
                let result = try model.generate(promptTokens: prompt, cache: &cache, maxTokens: configuration.replyTokens,
                                                sampling: .greedy)
                out.append(Turn(messages: history, reply: result.text))
                history.append(["role": "assistant", "content": result.text])
            }
            turns.append(out)
            log("reference replies: conversation \(c + 1) of \(users.count)")
        }
    }

    // MARK: Server

    var keyFile: URL { configuration.workDirectory.appendingPathComponent("keys.txt") }
    var secretFile: URL { configuration.workDirectory.appendingPathComponent("kv-secret") }
    var diskDirectory: URL { configuration.workDirectory.appendingPathComponent("disk") }
    var entriesDirectory: URL { diskDirectory.appendingPathComponent("kvtc-disk-tier") }
    var serverLog: URL { configuration.workDirectory.appendingPathComponent("server.log") }

    func writeCredentials() throws {
        try FileManager.default.createDirectory(at: configuration.workDirectory, withIntermediateDirectories: true)
        let keys = """
        # tenants of the fault harness
        \(aliceKey) alice
        \(bobKey) bob
        \(malloryKey) mallory
        \(adminKey) ops admin

        """
        try Data(keys.utf8).write(to: keyFile)
        try Data(secret).write(to: secretFile)
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Starts the server and waits until `/health` answers.
    func startServer() throws {
        let process = Process()
        process.executableURL = configuration.executable
        var arguments = ["serve", "--host", "127.0.0.1", "--port", String(port),
                         "--api-key-file", keyFile.path, "--kv-api", "--kv-secret", secretFile.path,
                         "--disk", diskDirectory.path, "--cache-codec", configuration.cacheCodec, "--chunk-tokens", "64",
                         "--memory-budget", String(configuration.memoryBudget), "--max-concurrent", "2", "--max-queue", "16",
                         "--max-tokens-limit", "64", "--idle-timeout", "10", "--max-prompt-bytes", "65536"]
        if let m = configuration.model { arguments += ["--model", m] }
        process.arguments = arguments
        if !FileManager.default.fileExists(atPath: serverLog.path) { FileManager.default.createFile(atPath: serverLog.path, contents: nil) }
        let logHandle = try FileHandle(forWritingTo: serverLog)
        logHandle.seekToEndOfFile()
        process.standardOutput = logHandle
        process.standardError = logHandle
        try process.run()
        server.withLock {
            $0.process = process
            $0.epoch += 1
        }
        let deadline = Date().addingTimeInterval(180)
        while Date() < deadline {
            if !process.isRunning { throw FaultHarnessError.serverDidNotStart("exited with status \(process.terminationStatus); see \(serverLog.path)") }
            if let r = try? LoopbackHTTP.exchange(port: port, method: "GET", path: "/health", timeout: 2), r.status == 200 {
                server.withLock { $0.up = true }
                return
            }
            usleep(100_000)
        }
        throw FaultHarnessError.serverDidNotStart("no /health answer within 180 s; see \(serverLog.path)")
    }

    /// Kills the server with SIGKILL and waits for it to exit (`injected`: a fault, counted;
    /// else the end of the run).
    func killServer(injected: Bool = true) {
        guard let process = server.withLock({ s -> Process? in
            s.up = false
            guard let p = s.process else { return nil }
            s.killedByUs.insert(p.processIdentifier)
            if injected { s.kills += 1 }
            return p
        }) else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// The server's peak resident set so far (VmHWM).
    func sampleRSS() {
        guard let pid = server.withLock({ $0.process?.processIdentifier }),
              let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return }
        for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let kb = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
            server.withLock { $0.peakRSS = max($0.peakRSS, kb * 1024) }
        }
    }

    /// Flips bits in, truncates or deletes entry files of the disk tier.
    func damageFiles(count: Int, rng: inout SplitMix64) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: entriesDirectory.path) else { return }
        let entries = names.filter { $0.hasSuffix(".kve") }
        guard !entries.isEmpty else { return }
        for _ in 0..<count {
            let path = entriesDirectory.appendingPathComponent(entries[Int(rng.next() % UInt64(entries.count))]).path
            guard var bytes = FileManager.default.contents(atPath: path).map(Array.init), bytes.count > 8 else { continue }
            switch rng.next() % 3 {
            case 0:
                let i = Int(rng.next() % UInt64(bytes.count))
                bytes[i] ^= UInt8(1 << (rng.next() % 8))
                FileManager.default.createFile(atPath: path, contents: Data(bytes))
            case 1:
                FileManager.default.createFile(atPath: path, contents: Data(bytes.prefix(Int(rng.next() % UInt64(bytes.count)))))
            default:
                try? FileManager.default.removeItem(atPath: path)
            }
            stats.withLock { $0.damaged += 1 }
        }
    }

    // MARK: Requests

    enum Outcome { case status(LoopbackHTTP.Reply), down, broken(String) }

    /// Runs one exchange and classifies socket failures as caused by a kill or not.
    func attempt(_ body: () throws(LoopbackHTTP.Failure) -> LoopbackHTTP.Reply) -> Outcome {
        let epoch = server.withLock { $0.epoch }
        do { return .status(try body()) } catch {
            let (nowEpoch, up) = server.withLock { ($0.epoch, $0.up) }
            if nowEpoch != epoch || !up || error == .refused { return .down }
            return .broken(error.description)
        }
    }

    func record(_ name: String, hostile: Bool, _ outcome: Outcome, seconds: Double? = nil) {
        stats.withLock { s in
            var c = s.classes[name] ?? RequestClassRecord(name: name, hostile: hostile)
            switch outcome {
            case .status(let r):
                c.outcomes[r.status == 0 ? "no response" : String(r.status), default: 0] += 1
                if r.status >= 500 {
                    if hostile { s.fiveOnHostile += 1 } else { s.fiveOnValid += 1 }
                    if s.incidents.count < 40 { s.incidents.append("\(name): \(r.status) \(r.text.prefix(200))") }
                }
                if let seconds, !hostile { s.validLatency.append(seconds) }
            case .down: c.outcomes["down", default: 0] += 1
            case .broken(let m):
                c.outcomes["broken", default: 0] += 1
                if !hostile, s.incidents.count < 40 { s.incidents.append("\(name): connection broken while the server was up: \(m)") }
            }
            s.classes[name] = c
        }
    }

    func incident(_ text: String) { stats.withLock { if $0.incidents.count < 40 { $0.incidents.append(text) } } }

    static func reply(_ r: LoopbackHTTP.Reply) -> (String?, Int?) {
        let choice = (r.json?["choices"] as? [[String: Any]])?.first
        let text = (choice?["message"] as? [String: Any])?["content"] as? String
        let cached = ((r.json?["usage"] as? [String: Any])?["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int
        return (text, cached)
    }

    func chatBody(_ turn: Turn, salt: String? = nil, stream: Bool = false) -> [String: Any] {
        var body: [String: Any] = ["messages": turn.messages, "max_tokens": configuration.replyTokens, "temperature": 0]
        if let salt { body["cache_salt"] = salt }
        if stream { body["stream"] = true }
        return body
    }

    /// A valid chat turn of a tenant, compared with its reference.
    func validTurn(_ rng: inout SplitMix64) {
        let c = Int(rng.next() % UInt64(turns.count)), t = Int(rng.next() % UInt64(turns[c].count))
        let turn = turns[c][t]
        let key = rng.next() % 2 == 0 ? aliceKey : bobKey
        let salt: String? = rng.next() % 4 == 0 ? "team-\(c % 2)" : nil
        let clock = Date()
        let outcome = attempt { () throws(LoopbackHTTP.Failure) in
            try LoopbackHTTP.json(port: port, path: "/v1/chat/completions", key: key, object: chatBody(turn, salt: salt))
        }
        record("chat turn", hostile: false, outcome, seconds: Date().timeIntervalSince(clock))
        if case .status(let r) = outcome, r.status == 200 {
            let (text, _) = Self.reply(r)
            stats.withLock { s in
                s.compared += 1
                if text != turn.reply, configuration.cacheCodec != "exact" {
                    s.lossyDivergences += 1
                } else if text != turn.reply {
                    s.wrong += 1
                    if s.incidents.count < 40 { s.incidents.append("wrong answer c\(c) t\(t): \(String(describing: text).debugDescription) expected \(turn.reply.debugDescription)") }
                }
            }
        }
    }

    /// A cheap valid request: the model list or the metrics.
    func validMisc(_ rng: inout SplitMix64) {
        let path = rng.next() % 2 == 0 ? "/v1/models" : "/metrics"
        let clock = Date()
        let outcome = attempt { () throws(LoopbackHTTP.Failure) in
            try LoopbackHTTP.exchange(port: port, method: "GET", path: path, headers: ["Authorization": "Bearer \(aliceKey)"], timeout: 30)
        }
        record(path, hostile: false, outcome, seconds: Date().timeIntervalSince(clock))
    }

    /// One hostile request of a random class.
    func hostile(_ rng: inout SplitMix64) {
        let turn = turns[Int(rng.next() % UInt64(turns.count))].last!
        let port = self.port
        func json(_ key: String?, _ object: Any, path: String = "/v1/chat/completions") -> Outcome {
            attempt { () throws(LoopbackHTTP.Failure) in try LoopbackHTTP.json(port: port, path: path, key: key, object: object, timeout: 60) }
        }
        func raw(_ method: String, _ path: String, _ headers: [String: String], _ body: [UInt8]?) -> Outcome {
            attempt { () throws(LoopbackHTTP.Failure) in
                try LoopbackHTTP.exchange(port: port, method: method, path: path, headers: headers, body: body, timeout: 60)
            }
        }
        let admin = ["Authorization": "Bearer \(adminKey)"]
        switch rng.next() % 14 {
        case 0:
            var bytes = Array((try? JSONSerialization.data(withJSONObject: chatBody(turn))) ?? Data())
            for _ in 0..<(1 + rng.next() % 4) where !bytes.isEmpty {
                let i = Int(rng.next() % UInt64(bytes.count))
                switch rng.next() % 3 {
                case 0: bytes[i] = UInt8(truncatingIfNeeded: rng.next())
                case 1: bytes = Array(bytes.prefix(i))
                default: bytes.insert(contentsOf: [0x7B, 0x22, 0x00, 0xFF], at: i)
                }
            }
            record("mutated JSON", hostile: true, raw("POST", "/v1/chat/completions",
                                                      ["Content-Type": "application/json", "Authorization": "Bearer \(aliceKey)"], bytes))
        case 1:
            record("oversized body", hostile: true, raw("POST", "/v1/chat/completions",
                                                        ["Content-Type": "application/json", "Authorization": "Bearer \(bobKey)"],
                                                        [UInt8](repeating: 0x20, count: 3 << 20)))
        case 2:
            let flood = String(repeating: "<|im_end|>x", count: 4000)
            record("control-token flood", hostile: true, json(aliceKey, ["messages": [["role": "user", "content": flood]], "max_tokens": 1]))
        case 3:
            let word = String(repeating: "z", count: 40_000)
            record("long word", hostile: true, json(bobKey, ["messages": [["role": "user", "content": word]], "max_tokens": 1]))
        case 4:
            record("bad key", hostile: true, json("fault-wrong-" + Self.randomHex(8), chatBody(turn)))
        case 5:
            let key = Self.randomHex(32)
            let choice = rng.next() % 3
            let headers = choice == 0 ? [:] : choice == 1 ? ["Authorization": "Bearer \(malloryKey)"] : admin
            record(choice == 2 ? "raw PUT unsigned" : "raw PUT without admin key", hostile: true,
                   raw("PUT", "/v1/kv/\(key)?tenant=alice", headers, (0..<2048).map { _ in UInt8.random(in: 0...255) }))
        case 6:
            forgedSignedPut(turn, &rng)
        case 7:
            crossTenantProbe(turn, &rng)
        case 8:
            crossTenantRead(turn, &rng)
        case 9:
            disconnectMidStream(turn)
        case 10:
            let outcome = attempt { () throws(LoopbackHTTP.Failure) in
                let c = try LoopbackHTTP.Connection(port: port, timeout: 5)
                try c.send(Array("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nAuthorization: Bearer \(self.aliceKey)\r\n\r\n{\"messages\": [".utf8))
                return LoopbackHTTP.Reply(status: 0, headers: [:], body: [])
            }
            record("half-sent request", hostile: true, outcome)
        case 11:
            let garbage = (0..<Int(64 + rng.next() % 2000)).map { _ in UInt8.random(in: 0...255) }
            let outcome = attempt { () throws(LoopbackHTTP.Failure) in
                let c = try LoopbackHTTP.Connection(port: port, timeout: 15)
                try c.send(garbage)
                return (try? c.response()) ?? LoopbackHTTP.Reply(status: 0, headers: [:], body: [])
            }
            record("garbage bytes", hostile: true, outcome)
        case 12:
            record("huge max_tokens", hostile: true, json(aliceKey, ["messages": turn.messages, "max_tokens": 1_000_000]))
        default:
            record("raw route as user", hostile: true, json(malloryKey, ["messages": turn.messages, "tenant": "alice"], path: "/v1/kv/lookup"))
        }
    }

    /// A peer holding the secret uploads an entry whose header was altered: signed, but not
    /// an entry for its key. It must be refused.
    func forgedSignedPut(_ turn: Turn, _ rng: inout SplitMix64) {
        let admin = ["Authorization": "Bearer \(adminKey)"]
        guard let lookup = try? LoopbackHTTP.json(port: port, path: "/v1/kv/lookup", key: adminKey,
                                                  object: ["messages": turn.messages, "tenant": "alice"], timeout: 30),
              let key = Self.storedKeys(lookup).first,
              let entry = try? LoopbackHTTP.exchange(port: port, method: "GET", path: "/v1/kv/\(key)?tenant=alice", headers: admin, timeout: 30),
              entry.status == 200, entry.body.count > 120 else {
            // Nothing of this turn is stored yet: probe instead.
            crossTenantProbe(turn, &rng)
            return
        }
        var forged = entry.body
        // A token id in the header (magic 8, kind 1, digest 32, anchor 32, start 8, count 4).
        forged[85 + Int(rng.next() % 16)] ^= 0x01
        let target = Self.randomHex(32)
        let signer = EntrySigner(secret: secret)
        let headers = admin.merging([EntrySigner.header: signer.sign(StoreKey(hex: target)!, forged)]) { a, _ in a }
        let outcome = attempt { () throws(LoopbackHTTP.Failure) in
            try LoopbackHTTP.exchange(port: port, method: "PUT", path: "/v1/kv/\(target)?tenant=alice", headers: headers, body: forged, timeout: 30)
        }
        record("forged signed PUT", hostile: true, outcome)
        if case .status(let r) = outcome, r.status == 201 { incident("a forged, signed entry was accepted under \(target)") }
    }

    /// Another tenant, or a fresh salt, asks for a conversation it never sent: nothing may
    /// be restored.
    func crossTenantProbe(_ turn: Turn, _ rng: inout SplitMix64) {
        let key = rng.next() % 2 == 0 ? malloryKey : bobKey
        let salt = "probe-" + Self.randomHex(8)
        let outcome = attempt { () throws(LoopbackHTTP.Failure) in
            try LoopbackHTTP.json(port: port, path: "/v1/chat/completions", key: key, object: chatBody(turn, salt: salt))
        }
        record("cross-tenant probe", hostile: true, outcome)
        if case .status(let r) = outcome, r.status == 200, let cached = Self.reply(r).1, cached > 0 {
            stats.withLock { $0.crossTenant += 1 }
            incident("cross-tenant hit: \(cached) tokens restored for a fresh salt")
        }
    }

    /// Reads of Alice's entries by a user key and as another tenant.
    func crossTenantRead(_ turn: Turn, _ rng: inout SplitMix64) {
        guard let lookup = try? LoopbackHTTP.json(port: port, path: "/v1/kv/lookup", key: adminKey,
                                                  object: ["messages": turn.messages, "tenant": "alice"], timeout: 30),
              let key = Self.storedKeys(lookup).first else {
            crossTenantProbe(turn, &rng)
            return
        }
        let asUser = rng.next() % 2 == 0
        let headers = ["Authorization": "Bearer \(asUser ? malloryKey : adminKey)"]
        let outcome = attempt { () throws(LoopbackHTTP.Failure) in
            try LoopbackHTTP.exchange(port: port, method: "GET", path: "/v1/kv/\(key)?tenant=\(asUser ? "alice" : "bob")",
                                      headers: headers, timeout: 30)
        }
        record("cross-tenant read", hostile: true, outcome)
        if case .status(let r) = outcome, r.status == 200 {
            stats.withLock { $0.crossTenant += 1 }
            incident("cross-tenant read of \(key) answered 200")
        }
    }

    /// The entry keys a lookup answer names (chunks, then the tail).
    static func storedKeys(_ lookup: LoopbackHTTP.Reply) -> [String] {
        ((lookup.json?["chunk_keys"] as? [String]) ?? []) + ((lookup.json?["tail_key"] as? String).map { [$0] } ?? [])
    }

    /// A stream read up to its first event, then abandoned.
    func disconnectMidStream(_ turn: Turn) {
        let outcome = attempt { () throws(LoopbackHTTP.Failure) in
            let c = try LoopbackHTTP.Connection(port: port, timeout: 60)
            let body = Array((try? JSONSerialization.data(withJSONObject: chatBody(turn, stream: true))) ?? Data())
            try c.send(LoopbackHTTP.requestBytes(method: "POST", path: "/v1/chat/completions",
                                                 headers: ["Content-Type": "application/json", "Authorization": "Bearer \(aliceKey)"], body: body))
            let (status, headers) = try c.head()
            if status == 200 { _ = try c.body(headers) { _ in false } }
            return LoopbackHTTP.Reply(status: status, headers: headers, body: [])
        }
        record("disconnect mid-stream", hostile: true, outcome)
    }

    // MARK: Run

    /// Runs the whole harness and reports.
    public func run(model: any LanguageModel) throws -> FaultReport {
        try writeCredentials()
        try? FileManager.default.removeItem(at: diskDirectory)
        try prepare(model: model)
        port = Self.freePort()
        try startServer()
        let start = Date()
        stopAt = start.addingTimeInterval(configuration.duration)
        log("server up on port \(port); \(Int(configuration.duration)) s of traffic, \(configuration.kills) kills")
        let group = DispatchGroup()
        func thread(_ name: String, _ body: @escaping @Sendable () -> Void) {
            group.enter()
            let t = Thread { body(); group.leave() }
            t.name = name
            t.start()
        }
        for i in 0..<configuration.clients {
            let seed = configuration.seed &+ UInt64(i + 1) &* 0x9E37_79B9
            thread("client \(i)") { [self] in
                var rng = SplitMix64(seed: seed)
                while Date() < stopAt {
                    if !server.withLock({ $0.up }) { usleep(50_000); continue }
                    let u = Double(rng.next() % 10_000) / 10_000
                    if u < configuration.hostileFraction { hostile(&rng) }
                    else if u < configuration.hostileFraction + 0.15 { validMisc(&rng) }
                    else { validTurn(&rng) }
                }
            }
        }
        thread("health") { [self] in
            while Date() < stopAt {
                if server.withLock({ $0.up }) {
                    let clock = Date()
                    let outcome = attempt { () throws(LoopbackHTTP.Failure) in
                        try LoopbackHTTP.exchange(port: port, method: "GET", path: "/health", timeout: 10)
                    }
                    let seconds = Date().timeIntervalSince(clock)
                    record("/health", hostile: false, outcome)
                    if case .status = outcome { stats.withLock { $0.healthLatency.append(seconds) } }
                }
                usleep(50_000)
            }
        }
        thread("monitor") { [self] in
            var rng = SplitMix64(seed: configuration.seed ^ 0xDA3A6E)
            let kills = configuration.kills
            var killTimes = (0..<kills).map { k in
                start.addingTimeInterval(configuration.duration * (Double(k) + 0.3 + 0.4 * Double(rng.next() % 1000) / 1000) / Double(kills))
            }
            var nextDamage = start.addingTimeInterval(15)
            while Date() < stopAt {
                sampleRSS()
                // A server exit the harness did not cause is a crash: count it and restart.
                let crashed: Process? = server.withLock { s in
                    guard let p = s.process, !p.isRunning, s.up else { return nil }
                    s.up = false
                    if !s.killedByUs.contains(p.processIdentifier) { s.crashes += 1 }
                    return p
                }
                if let p = crashed {
                    incident("server exited by itself: status \(p.terminationStatus) reason \(p.terminationReason.rawValue)")
                    do { try startServer() } catch { incident("restart failed: \(error)") }
                }
                if let next = killTimes.first, Date() >= next {
                    killTimes.removeFirst()
                    killServer()
                    damageFiles(count: 3, rng: &rng)
                    log("killed the server (\(server.withLock { $0.kills }) of \(kills)); damaged files; restarting")
                    do { try startServer() } catch { incident("restart failed: \(error)") }
                }
                if Date() >= nextDamage {
                    damageFiles(count: 1, rng: &rng)
                    nextDamage = Date().addingTimeInterval(10)
                }
                usleep(200_000)
            }
        }
        // Progress while the threads run.
        while group.wait(timeout: .now() + 30) == .timedOut {
            let s = stats.withLock { ($0.classes.values.reduce(0) { $0 + $1.total }, $0.compared, $0.wrong) }
            log(String(format: "%4.0f s: %d requests, %d turns compared, %d wrong", Date().timeIntervalSince(start), s.0, s.1, s.2))
        }
        let metricsText = (try? LoopbackHTTP.exchange(port: port, method: "GET", path: "/metrics",
                                                     headers: ["Authorization": "Bearer \(adminKey)"], timeout: 30).text) ?? ""
        var invalid: [String: Double] = [:]
        for line in metricsText.split(separator: "\n") where line.hasPrefix("kvtc_cache_invalid_entries_total{reason=\"") {
            let parts = line.split(separator: " ")
            let reason = parts[0].split(separator: "\"")[1]
            invalid[String(reason)] = Double(parts.last ?? "") ?? 0
        }
        sampleRSS()
        killServer(injected: false)
        let seconds = Date().timeIntervalSince(start)
        return report(seconds: seconds, model: model, invalid: invalid)
    }

    func report(seconds: Double, model: any LanguageModel, invalid: [String: Double]) -> FaultReport {
        let s = stats.current, srv = server.current
        func percentile(_ v: [Double], _ p: Double) -> Double {
            guard !v.isEmpty else { return 0 }
            let sorted = v.sorted()
            return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))]
        }
        let classes = s.classes.values.sorted { ($0.hostile ? 1 : 0, $0.name) < ($1.hostile ? 1 : 0, $1.name) }
        // The weights as the server holds them: every tensor dequantized to f32.
        let modelBytes = ((try? GGUFFile(path: model.path))?.tensors ?? []).reduce(0) { $0 + 4 * $1.elementCount }
        return FaultReport(seconds: seconds, requests: classes.reduce(0) { $0 + $1.total },
                           hostileRequests: classes.filter(\.hostile).reduce(0) { $0 + $1.total }, classes: classes,
                           wrongAnswers: s.wrong, comparedTurns: s.compared, lossyDivergences: s.lossyDivergences,
                           cacheCodec: configuration.cacheCodec, crossTenantHits: s.crossTenant,
                           crashes: srv.crashes, kills: srv.kills, serverErrorsOnValid: s.fiveOnValid,
                           serverErrorsOnHostile: s.fiveOnHostile, filesDamaged: s.damaged,
                           validLatencyP50: percentile(s.validLatency, 0.5), validLatencyP99: percentile(s.validLatency, 0.99),
                           healthLatencyP50: percentile(s.healthLatency, 0.5), healthLatencyP99: percentile(s.healthLatency, 0.99),
                           peakRSSBytes: srv.peakRSS, modelBytes: modelBytes,
                           rssLimitBytes: modelBytes + configuration.memoryBudget + (512 << 20),
                           incidents: s.incidents, invalidEntriesByReason: invalid)
    }
}

/// Why the harness could not run.
public enum FaultHarnessError: Error, CustomStringConvertible {
    case serverDidNotStart(String)

    public var description: String {
        switch self {
        case .serverDidNotStart(let m): return "the server did not start: \(m)"
        }
    }
}

