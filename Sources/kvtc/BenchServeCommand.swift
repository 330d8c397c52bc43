import ArgumentParser
import Foundation
import KVTCBenchmarks
import KVTCCalibration
import KVTCRedis
import KVTCRuntime

/// A comma-separated list of cache policies, e.g. `exact,kvtc`.
struct PolicyList: ExpressibleByArgument {
    var policies: [CachePolicy]

    init(_ policies: [CachePolicy]) { self.policies = policies }

    init?(argument: String) {
        var out: [CachePolicy] = []
        for part in argument.split(separator: ",") {
            guard let p = CachePolicy(rawValue: part.trimmingCharacters(in: .whitespaces)) else { return nil }
            out.append(p)
        }
        guard !out.isEmpty else { return nil }
        policies = out
    }

    var defaultValueDescription: String { policies.map(\.rawValue).joined(separator: ",") }
}

/// `kvtc bench serve`: replays multi-turn conversations under three cache policies with the
/// same memory budget and compares time to first token; also times restoring a 4096-token
/// context against recomputing it.
struct BenchServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Time to first token of a multi-turn chat workload: recompute vs exact fp16 store vs KVTC store.")

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(name: .long, help: "KVTC profile file (default: the model's default profile).")
    var profile: String?

    @Option(name: .long, help: "Nominal ratio of the KVTC chunks.")
    var ratio: Double = 16

    @Option(name: .long, help: "Conversations in the workload.")
    var conversations = 10

    @Option(name: .long, help: "Turns per conversation.")
    var turns = 8

    @Option(name: .long, help: "Context each conversation grows to (tokens).")
    var context = 4224

    @Option(name: .long, help: "Tokens generated per reply.")
    var replyTokens = 8

    @Option(name: .long, help: "Memory budget of every policy (default: the exact fp16 caches of a tenth of the conversations).")
    var memoryBudget: ByteCount?

    @Option(name: .long, help: "Tokens of the restore-vs-recompute measurement.")
    var restoreTokens = 4096

    @Option(name: .long, help: "Policies to run, comma-separated (\(CachePolicy.allCases.map(\.rawValue).joined(separator: ", "))); kvtc-redis is added with --redis.")
    var policies = PolicyList(CachePolicy.local)

    @Option(name: .long, help: "A Redis deployment (redis://host:port[,host:port...]): adds the kvtc-redis policy and the restore from Redis.")
    var redis: String?

    @Option(name: .long, help: "Milliseconds a Redis read may take before it counts as a miss.")
    var redisTimeoutMs = RedisConfiguration.defaultTimeout * 1000

    @Option(name: .long, help: "Certificate authorities (PEM) trusted for rediss:// (default: the system's).")
    var redisCA: String?

    @Option(name: .long, help: "Write the JSON report here.")
    var json: String?

    func validate() throws {
        guard conversations > 0, turns > 0, replyTokens > 0 else { throw ValidationError("counts must be positive") }
        guard context >= 256 * turns / 4 else { throw ValidationError("--context is too small for --turns") }
    }

    func run() async throws {
        let model = try modelOptions.load()
        let profile = try ProfileResolver.profile(path: profile, model: model) { Progress.shared.status($0) }
        var workload = ServingWorkload()
        workload.conversations = conversations
        workload.turns = turns
        workload.context = context
        workload.replyTokens = replyTokens
        let redisConfiguration = try redis.map { try RedisConfiguration(url: $0, timeout: redisTimeoutMs / 1000, tlsCAFile: redisCA) }
        var selected = policies.policies
        if redisConfiguration != nil, !selected.contains(.kvtcRedis) { selected.append(.kvtcRedis) }
        let bench = ServingBenchmark(model: model, profile: profile, ratio: ratio, workload: workload,
                                     memoryBudget: memoryBudget?.bytes, redis: redisConfiguration) { Progress.shared.status($0) }
        let corpus = try Corpus.bundled()

        let r = try await bench.restoreVersusRecompute(tokens: restoreTokens, corpus: corpus)
        Progress.shared.done()
        print("backends: \(backendSummary(model: model.precision))")
        print(String(format: "restore %d tokens: kvtc %.3f s (%.1f MiB stored), exact fp16 %.3f s (%.1f MiB); recompute %.3f s; kvtc restore is %.1fx faster than recompute",
                     r.tokens, r.kvtcSeconds, Double(r.kvtcStoredBytes) / 1048576, r.exactSeconds,
                     Double(r.exactStoredBytes) / 1048576, r.recomputeSeconds, r.recomputeSeconds / r.kvtcSeconds))
        if let x = r.redis {
            print("from \(x.topology):")
            print(String(format: "  kvtc from Redis %.3f s vs %.3f s from local memory, alternating (%.2fx, floor <= 1.5x); %.1fx faster than recompute (floor >= 8x)",
                         x.kvtcSeconds, x.localSeconds, x.kvtcSeconds / x.localSeconds, r.recomputeSeconds / x.kvtcSeconds))
            print(String(format: "  Redis batches took %.1f ms on average; %d tier errors (timeouts or failed nodes) during the restores",
                         1000 * x.kvtcRoundTripSeconds, x.kvtcErrors))
            print(String(format: "  bytes fetched per restore: kvtc %.2f MiB, exact fp16 %.2f MiB (%.1fx fewer, floor >= 15x); exact fp16 from Redis %.3f s",
                         Double(x.kvtcBytesFetched) / 1048576, Double(x.exactBytesFetched) / 1048576,
                         Double(x.exactBytesFetched) / Double(max(1, x.kvtcBytesFetched)), x.exactSeconds))
        }

        let messages = workload.messages(tokenizer: model.tokenizer, corpus: corpus)
        var records: [PolicyRecord] = []
        for policy in CachePolicy.allCases where selected.contains(policy) {
            records.append(try await bench.run(policy, messages: messages))
            Progress.shared.done()
        }
        print(String(format: "workload: %d conversations x %d turns, contexts up to ~%d tokens, memory budget %.1f MiB",
                     conversations, turns, context, Double(bench.memoryBudget) / 1048576))
        print("policy      TTFT mean   p50      p95      hit rate  cached   bytes held")
        for r in records {
            print(r.policy.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0) + String(format: " %7.3f s %7.3f s %7.3f s  %6.1f%%  %6.1f%%  %8.1f MiB",
                         r.ttftMeanSeconds, r.ttftP50Seconds, r.ttftP95Seconds, 100 * r.hitRate, 100 * r.cachedTokenFraction,
                         Double(r.bytesHeld) / 1048576))
        }
        if let e = records.first(where: { $0.policy == .exact }), let k = records.first(where: { $0.policy == .kvtc }) {
            print(String(format: "kvtc mean TTFT is %.2fx lower than exact (floor: 3x)", e.ttftMeanSeconds / k.ttftMeanSeconds))
        }
        print(String(format: "restore %d tokens %.3f s, recompute %.3f s: %.1fx%@", r.tokens,
                     r.kvtcSeconds, r.recomputeSeconds, r.recomputeSeconds / r.kvtcSeconds, r.tokens == 4096 ? " (floor: 12x)" : ""))
        let report = ServingReport(model: model.identity, profile: profile.contentHash, ratio: ratio, workload: workload,
                                   policies: records, restore: r)
        if let json {
            try writeFile(json, Array(jsonString(report).utf8))
            warn("kvtc: wrote \(json)")
        }
    }
}
