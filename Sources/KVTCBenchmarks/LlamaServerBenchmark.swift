import Foundation
import KVTCCalibration
import KVTCCodec
import KVTCLlamaServer
import KVTCModels
import KVTCRuntime
import KVTCStore

/// What `kvtc bench llama-server` measured: a returning conversation after llama-server
/// restarted, served three ways, the bytes each way keeps, and how closely llama-server
/// continues from a kvtc-restored slot.
public struct LlamaServerReport: Sendable, Codable {
    public var model: String
    public var profile: String
    public var ratio: Double
    public var threads: Int
    public var contextTokens: Int
    public var newTokens: Int
    /// Time to first token of the returning turn (`contextTokens` cached, `newTokens` new), medians over the runs.
    public var recomputeTTFTSeconds: Double
    public var ownRestoreTTFTSeconds: Double
    public var kvtcTTFTSeconds: Double
    /// Every run's figures.
    public var recomputeRuns: [Double]
    public var ownRestoreRuns: [Double]
    public var kvtcRuns: [Double]
    /// Tokens llama-server reported cached in kvtc's runs (`timings.cache_n`).
    public var kvtcCachedTokens: [Int]
    /// kvtc's part of each run: lookup, decompression, the state file and llama-server's
    /// restore of it; and llama-server's prefill of the new tokens after it.
    public var kvtcRestoreRuns: [Double]
    public var kvtcPrefillRuns: [Double]
    /// The flags llama-server ran with beyond kvtc's (`--server-args`).
    public var serverArguments: [String]
    /// llama-server's own slot save of the context: bytes, save and restore milliseconds.
    public var ownSlotFileBytes: Int
    public var ownSaveMilliseconds: Double
    public var ownRestoreMilliseconds: Double
    /// Bytes kvtc's store holds for the conversation (chunks and tail, sealed).
    public var kvtcStoredBytes: Int
    /// Bytes of the compressed chunks alone, and their fp16 size.
    public var kvtcChunkBytes: Int
    public var kvtcChunkFP16Bytes: Int
    /// Teacher-forced agreement over held-out tokens: llama-server after a kvtc restore vs
    /// its own uninterrupted run (KL over the reference's top tokens).
    public var agreementTokens: Int
    public var agreementTopK: Int
    public var meanKL: Double
    public var top1Agreement: Double

    public var recomputeOverKVTC: Double { recomputeTTFTSeconds / kvtcTTFTSeconds }
    public var kvtcOverOwnRestore: Double { kvtcTTFTSeconds / ownRestoreTTFTSeconds }
    public var fileOverStored: Double { Double(ownSlotFileBytes) / Double(max(1, kvtcStoredBytes)) }
    public var chunkRatio: Double { Double(kvtcChunkFP16Bytes) / Double(max(1, kvtcChunkBytes)) }
}

/// The benchmark of kvtc in front of a real llama-server (started here, on loopback).
public struct LlamaServerBenchmark: Sendable {
    public var model: any LanguageModel
    public var profile: Profile
    public var ratio: Double
    public var threads = 2
    public var contextTokens = 4096
    public var newTokens = 32
    public var runs = 3
    public var agreementTokens = 64
    public var topK = 20
    /// Extra llama-server flags (e.g. `-fa off`).
    public var serverArguments: [String] = []
    public var progress: @Sendable (String) -> Void

    public init(model: any LanguageModel, profile: Profile, ratio: Double, progress: @escaping @Sendable (String) -> Void = { _ in }) {
        self.model = model
        self.profile = profile
        self.ratio = ratio
        self.progress = progress
    }

    /// Held-out text of the bundled corpus, tokenized by llama-server.
    func text(_ api: LlamaServerAPI, tokens: Int) async throws -> [Int] {
        let corpus = try Corpus.bundled()
        let all = try await api.tokenize(corpus.heldOut.map(\.text).joined(separator: "\n\n"))
        guard all.count >= tokens else { throw LlamaServerProcessError("the held-out text has \(all.count) tokens, \(tokens) wanted") }
        return Array(all.prefix(tokens))
    }

    /// Seconds to the first generated token of `prompt` in slot 0.
    static func firstToken(_ api: LlamaServerAPI, _ prompt: [Int]) async throws -> (Double, CompletionChunk?) {
        let clock = Date()
        var first: Double?
        var last: CompletionChunk?
        for try await chunk in try await api.completion(CompletionParameters(prompt: prompt, nPredict: 1, temperature: 0, topP: 1,
                                                                             seed: 0, idSlot: 0)) {
            if first == nil, !(chunk.tokens ?? []).isEmpty { first = Date().timeIntervalSince(clock) }
            last = chunk
        }
        return (first ?? Date().timeIntervalSince(clock), last)
    }

    static func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

    public func run() async throws -> LlamaServerReport {
        let slotContext = contextTokens + newTokens + agreementTokens + 64
        let server = try LlamaServerProcess(model: model.path, slots: 1, slotContext: slotContext, threads: threads,
                                            extra: serverArguments)
        let api = LlamaServerAPI(url: server.url)
        let tokens = try await text(api, tokens: contextTokens + newTokens + agreementTokens + 1)
        let context = Array(tokens.prefix(contextTokens))
        let returning = Array(tokens.prefix(contextTokens + newTokens))

        // 1. llama-server recomputing the whole context (fresh process each run).
        var recompute: [Double] = []
        for r in 0..<runs {
            progress("recompute run \(r + 1)/\(runs)")
            server.kill(); try server.start()
            recompute.append(try await Self.firstToken(api, returning).0)
        }

        // 2. llama-server restoring its own uncompressed slot file.
        progress("llama-server's own slot save")
        server.kill(); try server.start()
        _ = try await Self.firstToken(api, context)
        let saved = try await api.slotAction(0, .save, filename: "own.bin")
        let ownBytes = (try FileManager.default.attributesOfItem(atPath: server.slotDirectory.appendingPathComponent("own.bin").path)[.size] as? Int) ?? 0
        var own: [Double] = [], ownRestoreMs: [Double] = []
        for r in 0..<runs {
            progress("own restore run \(r + 1)/\(runs)")
            server.kill(); try server.start()
            let clock = Date()
            let restored = try await api.slotAction(0, .restore, filename: "own.bin")
            let restoreSeconds = Date().timeIntervalSince(clock)
            ownRestoreMs.append(1000 * restoreSeconds)
            guard restored.restored == contextTokens else { throw LlamaServerProcessError("llama-server restored \(restored.restored ?? 0) of \(contextTokens) tokens") }
            let (t, _) = try await Self.firstToken(api, returning)
            own.append(restoreSeconds + t)
        }

        // 3. kvtc in front: the context stored once, then restored into an empty slot each run.
        progress("kvtc: storing the context")
        server.kill(); try server.start()
        let store = try StoreFactory.kvtcStore(model: model, profile: profile, ratio: ratio, tiers: [MemoryTier(budget: 1 << 30)],
                                               configuration: StoreConfiguration(tailPrecision: .fp16))
        let engine = try await LlamaServerEngine.connect(backends: [LlamaServerBackend(url: server.url, slotDirectory: server.slotDirectory)],
                                                         model: model, store: store)
        _ = try await engine.complete(GenerationRequest(promptTokens: context, maxTokens: 1))
        await engine.flush()
        let stored = await store.tier.stats().bytes
        let counters = store.counters
        var kvtc: [Double] = [], cached: [Int] = [], restores: [Double] = [], prefills: [Double] = []
        for r in 0..<runs {
            progress("kvtc run \(r + 1)/\(runs)")
            server.kill(); try server.start()
            let o = try await engine.complete(GenerationRequest(promptTokens: returning, maxTokens: 1, store: false))
            kvtc.append(o.timeToFirstTokenSeconds)
            cached.append(o.cachedTokens)
            restores.append(o.restoreSeconds)
            prefills.append(o.prefillSeconds)
        }

        // 4. Agreement: teacher-forced held-out tokens after the kvtc-restored context vs
        // after llama-server's own computation of it.
        progress("agreement: after a kvtc restore")
        server.kill(); try server.start()
        _ = try await engine.complete(GenerationRequest(promptTokens: Array(tokens.prefix(contextTokens + 1)), maxTokens: 1, store: false))
        let restoredDistributions = try await teacherForced(api, tokens)
        progress("agreement: llama-server's own run")
        server.kill(); try server.start()
        let reference = try await teacherForced(api, tokens)
        var kl = 0.0, agree = 0
        for (p, q) in zip(reference, restoredDistributions) {
            kl += Self.divergence(p, q)
            if p.first?.0 == q.first?.0 { agree += 1 }
        }
        return LlamaServerReport(
            model: model.identity, profile: profile.contentHash, ratio: ratio, threads: threads, contextTokens: contextTokens,
            newTokens: newTokens, recomputeTTFTSeconds: Self.median(recompute), ownRestoreTTFTSeconds: Self.median(own),
            kvtcTTFTSeconds: Self.median(kvtc), recomputeRuns: recompute, ownRestoreRuns: own, kvtcRuns: kvtc,
            kvtcCachedTokens: cached, kvtcRestoreRuns: restores, kvtcPrefillRuns: prefills, serverArguments: serverArguments,
            ownSlotFileBytes: ownBytes, ownSaveMilliseconds: saved.milliseconds ?? 0,
            ownRestoreMilliseconds: Self.median(ownRestoreMs), kvtcStoredBytes: stored, kvtcChunkBytes: counters.chunkBytes,
            kvtcChunkFP16Bytes: counters.chunkFP16Bytes, agreementTokens: reference.count, agreementTopK: topK,
            meanKL: kl / Double(max(1, reference.count)), top1Agreement: Double(agree) / Double(max(1, reference.count)))
    }

    /// The top-`topK` log-probabilities after each of the `agreementTokens` held-out tokens
    /// that follow the context, each fed as the next prompt token (slot 0 reuses the rest).
    func teacherForced(_ api: LlamaServerAPI, _ tokens: [Int]) async throws -> [[(Int, Double)]] {
        var out: [[(Int, Double)]] = []
        for i in 1...agreementTokens {
            var parameters = CompletionParameters(prompt: Array(tokens.prefix(contextTokens + i)), nPredict: 1, temperature: 0,
                                                  topP: 1, seed: 0, idSlot: 0)
            parameters.nProbs = topK
            var row: [(Int, Double)] = []
            for try await chunk in try await api.completion(parameters) {
                if let p = chunk.probabilities?.first, let top = p.topLogprobs {
                    row = top.map { ($0.id, $0.logprob ?? -.infinity) }
                }
            }
            out.append(row)
        }
        return out
    }

    /// KL(p || q) over p's top tokens, both renormalized over that set; a token missing from
    /// q's top list gets q's smallest listed probability (an upper bound on its share).
    static func divergence(_ p: [(Int, Double)], _ q: [(Int, Double)]) -> Double {
        guard !p.isEmpty, !q.isEmpty else { return .nan }
        let qMap = Dictionary(q, uniquingKeysWith: { a, _ in a })
        let floor = q.map(\.1).min()!
        let pl = p.map(\.1), ql = p.map { qMap[$0.0] ?? floor }
        func normalized(_ xs: [Double]) -> [Double] {
            let m = xs.max()!
            let s = xs.reduce(0) { $0 + exp($1 - m) }
            return xs.map { exp($0 - m) / s }
        }
        let pp = normalized(pl), qq = normalized(ql)
        return zip(pp, qq).reduce(0) { $0 + ($1.0 > 0 ? $1.0 * log($1.0 / max($1.1, 1e-30)) : 0) }
    }
}
