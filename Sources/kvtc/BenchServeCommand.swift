import ArgumentParser
import Foundation
import KVTCCodec
import KVTCEvaluation
import KVTCModel
import KVTCServer
import KVTCStore

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

    @Option(name: .long, help: "Policies to run (comma-separated: recompute, exact, kvtc).")
    var policies = "recompute,exact,kvtc"

    @Option(name: .long, help: "Write the JSON report here.")
    var json: String?

    struct PolicyRecord: Codable {
        var policy: String
        var turns: Int
        var ttftMeanSeconds: Double
        var ttftP50Seconds: Double
        var ttftP95Seconds: Double
        var hitRate: Double
        var cachedTokenFraction: Double
        var bytesHeld: Int
        var memoryBudgetBytes: Int
        var restoreMeanSeconds: Double
        var prefillMeanSeconds: Double
        var wallSeconds: Double

        enum CodingKeys: String, CodingKey {
            case policy, turns
            case ttftMeanSeconds = "ttft_mean_seconds", ttftP50Seconds = "ttft_p50_seconds", ttftP95Seconds = "ttft_p95_seconds"
            case hitRate = "hit_rate", cachedTokenFraction = "cached_token_fraction", bytesHeld = "bytes_held"
            case memoryBudgetBytes = "memory_budget_bytes", restoreMeanSeconds = "restore_mean_seconds"
            case prefillMeanSeconds = "prefill_mean_seconds", wallSeconds = "wall_seconds"
        }
    }

    struct Report: Codable {
        var model: String
        var profile: String
        var ratio: Double
        var conversations: Int
        var turnsPerConversation: Int
        var finalContextTokens: Int
        var policies: [PolicyRecord]
        var restoreTokens: Int
        var restore4096Seconds: Double
        var recompute4096Seconds: Double
        var restoreExact4096Seconds: Double
        var kvtcStoredBytes4096: Int
        var exactStoredBytes4096: Int

        enum CodingKeys: String, CodingKey {
            case model, profile, ratio, conversations, policies
            case turnsPerConversation = "turns_per_conversation", finalContextTokens = "final_context_tokens"
            case restoreTokens = "restore_tokens", restore4096Seconds = "restore_4096_seconds"
            case recompute4096Seconds = "recompute_4096_seconds", restoreExact4096Seconds = "restore_exact_4096_seconds"
            case kvtcStoredBytes4096 = "kvtc_stored_bytes_4096", exactStoredBytes4096 = "exact_stored_bytes_4096"
        }
    }

    func validate() throws {
        guard conversations > 0, turns > 0, replyTokens > 0 else { throw ValidationError("counts must be positive") }
        guard context >= 256 * turns / 4 else { throw ValidationError("--context is too small for --turns") }
    }

    /// The user messages of every conversation: consecutive slices of the corpus text.
    func workload(model: LlamaModel) throws -> [[String]] {
        let corpus = try Corpus.bundled()
        let text = (corpus.calibration + corpus.heldOut).map(\.text).joined(separator: "\n\n")
        let ids = model.tokenizer.encode(text, parseSpecial: false)
        let perTurn = max(16, (context - 64 - turns * (replyTokens + 16)) / turns)
        var out: [[String]] = []
        var offset = 0
        for c in 0..<conversations {
            var messages: [String] = []
            for t in 0..<turns {
                if offset + perTurn > ids.count { offset = (c * 7919 + t * 104_729) % max(1, ids.count - perTurn) }
                let slice = Array(ids[offset..<(offset + perTurn)])
                offset += perTurn
                let piece = (try? model.tokenizer.decode(slice, skipControl: true)) ?? ""
                messages.append(t == 0 ? "Read this and answer briefly.\n\n\(piece)" : "More:\n\n\(piece)")
            }
            out.append(messages)
        }
        return out
    }

    static func percentile(_ values: [Double], _ p: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let s = values.sorted()
        let rank = p * Double(s.count - 1)
        let lo = Int(rank.rounded(.down)), hi = Int(rank.rounded(.up))
        return s[lo] + (s[hi] - s[lo]) * (rank - Double(lo))
    }

    func runPolicy(_ name: String, engine: InferenceEngine, tiers: [any CacheTier], budget: Int,
                   workload: [[String]]) async throws -> PolicyRecord {
        let model = engine.model
        var histories = [[ChatMessage]](repeating: [], count: workload.count)
        var ttft: [Double] = [], restore: [Double] = [], prefill: [Double] = []
        var hits = 0, cached = 0, prompt = 0
        let clock = Date()
        for t in 0..<turns {
            for c in workload.indices {
                histories[c].append(ChatMessage(role: "user", content: workload[c][t]))
                let tokens = model.tokenizer.encode(ChatTemplate.render(histories[c]))
                let o = try await engine.generate(GenerationRequest(promptTokens: tokens, maxTokens: replyTokens))
                histories[c].append(ChatMessage(role: "assistant", content: o.text))
                ttft.append(o.timeToFirstTokenSeconds)
                restore.append(o.restoreSeconds)
                prefill.append(o.prefillSeconds)
                if o.cachedTokens > 0 { hits += 1 }
                cached += o.cachedTokens
                prompt += o.promptTokens
                Progress.shared.status(String(format: "%@: turn %d/%d, conversation %d/%d: %d tokens, %d cached, TTFT %.2f s",
                                              name, t + 1, turns, c + 1, workload.count, o.promptTokens, o.cachedTokens,
                                              o.timeToFirstTokenSeconds))
            }
        }
        Progress.shared.done()
        var held = 0
        for tier in tiers { held += await tier.byteCount }
        return PolicyRecord(policy: name, turns: ttft.count, ttftMeanSeconds: ttft.reduce(0, +) / Double(ttft.count),
                            ttftP50Seconds: Self.percentile(ttft, 0.5), ttftP95Seconds: Self.percentile(ttft, 0.95),
                            hitRate: Double(hits) / Double(ttft.count), cachedTokenFraction: Double(cached) / Double(max(1, prompt)),
                            bytesHeld: held, memoryBudgetBytes: budget,
                            restoreMeanSeconds: restore.reduce(0, +) / Double(restore.count),
                            prefillMeanSeconds: prefill.reduce(0, +) / Double(prefill.count),
                            wallSeconds: Date().timeIntervalSince(clock))
    }

    /// Median seconds of `body` over `runs` runs.
    func median(_ runs: Int, _ body: () async throws -> Double) async rethrows -> Double {
        var times: [Double] = []
        for _ in 0..<runs { times.append(try await body()) }
        return Self.percentile(times, 0.5)
    }

    func run() async throws {
        let model = try modelOptions.load()
        let storeOptions = try StoreCommandOptions.parse(profile.map { ["--profile", $0] } ?? [])
        let profile = try storeOptions.loadProfile(model: model)
        let fp16PerToken = 4 * model.geometry.featuresPerToken
        let budget = memoryBudget?.bytes ?? fp16PerToken * context * max(1, conversations / 10)
        let wanted = Set(policies.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        let configuration = StoreConfiguration(tailPrecision: .fp16)

        // Restore vs recompute of one long context, side by side.
        let recomputeEngine = InferenceEngine(model: model, store: nil)
        let corpus = try Corpus.bundled()
        let longIDs = Array(model.tokenizer.encode(corpus.heldOut.map(\.text).joined(separator: "\n\n") + corpus.calibration.map(\.text).joined(separator: "\n\n"),
                                                   parseSpecial: false).prefix(restoreTokens))
        Progress.shared.status("restore vs recompute of \(longIDs.count) tokens")
        let cache = try await recomputeEngine.computeCache(tokens: longIDs)
        let kvtcStore = try StoreFactory.kvtcStore(model: model, profile: profile, ratio: ratio,
                                                   tiers: [MemoryTier(budget: 1 << 34)], configuration: configuration)
        let exactStore = try StoreFactory.exactStore(model: model, tiers: [MemoryTier(budget: 1 << 34)], configuration: configuration)
        let kvtcReceipt = try await kvtcStore.store(tokens: longIDs, cache: cache)
        let exactReceipt = try await exactStore.store(tokens: longIDs, cache: cache)
        let restoreKVTC = try await median(3) {
            guard let r = await kvtcStore.restore(tokens: longIDs), r.matchedTokens == longIDs.count else {
                throw CommandError("the KVTC store did not restore the stored context")
            }
            return r.seconds
        }
        let restoreExact = await median(3) { await exactStore.restore(tokens: longIDs)?.seconds ?? .nan }
        let recompute = try await median(2) { try await recomputeEngine.recomputeSeconds(tokens: longIDs) }
        Progress.shared.done()
        print(String(format: "restore %d tokens: kvtc %.3f s (%.1f MiB stored), exact fp16 %.3f s (%.1f MiB); recompute %.3f s; kvtc restore is %.1fx faster than recompute",
                     longIDs.count, restoreKVTC, Double(kvtcReceipt.bytesWritten) / 1048576, restoreExact,
                     Double(exactReceipt.bytesWritten) / 1048576, recompute, recompute / restoreKVTC))

        // The chat workload under each policy, with the same memory budget.
        let work = try workload(model: model)
        var records: [PolicyRecord] = []
        for name in ["recompute", "exact", "kvtc"] where wanted.contains(name) {
            let tiers: [any CacheTier] = name == "recompute" ? [] : [MemoryTier(budget: budget)]
            let store: CacheStore? = switch name {
            case "exact": try StoreFactory.exactStore(model: model, tiers: tiers, configuration: configuration)
            case "kvtc": try StoreFactory.kvtcStore(model: model, profile: profile, ratio: ratio, tiers: tiers, configuration: configuration)
            default: nil
            }
            let engine = InferenceEngine(model: model, store: store)
            records.append(try await runPolicy(name, engine: engine, tiers: tiers, budget: budget, workload: work))
        }
        print(String(format: "workload: %d conversations x %d turns, contexts up to ~%d tokens, memory budget %.1f MiB",
                     conversations, turns, context, Double(budget) / 1048576))
        print("policy      TTFT mean   p50      p95      hit rate  cached   bytes held")
        for r in records {
            print((r.policy as String).padding(toLength: 10, withPad: " ", startingAt: 0) + String(format: " %7.3f s %7.3f s %7.3f s  %6.1f%%  %6.1f%%  %8.1f MiB",
                         r.ttftMeanSeconds, r.ttftP50Seconds, r.ttftP95Seconds, 100 * r.hitRate, 100 * r.cachedTokenFraction,
                         Double(r.bytesHeld) / 1048576))
        }
        if let e = records.first(where: { $0.policy == "exact" }), let k = records.first(where: { $0.policy == "kvtc" }) {
            print(String(format: "kvtc mean TTFT is %.1fx lower than exact (floor: 3x)", e.ttftMeanSeconds / k.ttftMeanSeconds))
        }
        print(String(format: "restore %d tokens %.3f s, recompute %.3f s: %.1fx%@", longIDs.count,
                     restoreKVTC, recompute, recompute / restoreKVTC, longIDs.count == 4096 ? " (floor: 10x)" : ""))
        let report = Report(model: model.identity, profile: profile.contentHash, ratio: ratio, conversations: conversations,
                            turnsPerConversation: turns, finalContextTokens: context, policies: records,
                            restoreTokens: longIDs.count, restore4096Seconds: restoreKVTC, recompute4096Seconds: recompute,
                            restoreExact4096Seconds: restoreExact, kvtcStoredBytes4096: kvtcReceipt.bytesWritten,
                            exactStoredBytes4096: exactReceipt.bytesWritten)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        if let json {
            try encoder.encode(report).write(to: URL(fileURLWithPath: json))
            warn("kvtc: wrote \(json)")
        }
    }
}
