import ArgumentParser
import Foundation
import KVTCCalibration
import KVTCCache
import KVTCCodec
import KVTCEvaluation
import KVTCModels
import KVTCNumerics

/// `kvtc demo`: the end-to-end story on one screen.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Compress a real cache of the embedded model and show what it costs and what it saves.")

    @OptionGroup var modelOptions: ModelCommandOptions
    @Option(help: "Nominal ratio.") var ratio: Double = 16
    @Option(help: "Context tokens (BOS included).") var context: Int = 2048
    @Option(help: "Continuation tokens scored teacher-forced.") var continuation: Int = 64
    @Option(help: "Tokens generated greedily from each cache.") var generate: Int = 40

    func validate() throws {
        guard context >= 256, continuation >= 2, generate >= 1 else { throw ValidationError("--context >= 256, --continuation >= 2, --generate >= 1") }
    }

    func run() async throws {
        let progress = Progress.shared
        progress.status("loading the model (fetched on first use)")
        let model = try modelOptions.load()
        let corpus = try Corpus.bundled()
        let profile = try CorpusCalibration.defaultProfile(model: model, corpus: corpus, progress: { progress.status($0) })
        let compressor = try KVTCCompressor(profile: profile, ratio: ratio)

        // The longest held-out document that fits the context and continuation.
        var options = HarnessOptions()
        options.contextTokens = context
        options.continuationTokens = continuation
        options.windowsPerText = 1
        guard let window = QualityHarness.windows(model: model, documents: corpus.heldOut, options: options).first else {
            throw CommandError("no held-out document has \(context + continuation) tokens; lower --context")
        }
        progress.status("prefilling \(window.context.count) context tokens (recompute)")
        var exact = model.makeCache(reservingCapacity: context + continuation)
        let (_, recompute) = try Stopwatch.time { try model.prefill(tokens: window.context, cache: &exact, logits: .none) }
        progress.status("compressing at \(Profile.formatRatio(ratio))")
        let (blob, compressTime) = try Stopwatch.time { try compressor.compress(exact) }
        progress.status("restoring from the compressed blob")
        var (decoded, restore) = try Stopwatch.time { try compressor.decompress(blob.bytes) }
        // The first run also pages in the output and wakes the BLAS threads: keep the best of three.
        for _ in 0..<2 { restore = min(restore, try Stopwatch.time { try compressor.decompress(blob.bytes) }.1) }

        progress.status("scoring the continuation with both caches")
        let feed = Array(window.continuation.dropLast())
        var ce = exact, cd = decoded
        let le = try model.prefill(tokens: feed, cache: &ce, logits: .all)
        let ld = try model.prefill(tokens: feed, cache: &cd, logits: .all)
        let metrics = compareDistributions(reference: le.elements, candidate: ld.elements, vocabulary: model.dimensions.vocabularySize,
                                           targets: Array(window.continuation.dropFirst()))
        progress.status("generating greedily from both caches")
        let textExact = try greedy(model: model, cache: exact, first: window.continuation[0])
        let textDecoded = try greedy(model: model, cache: decoded, first: window.continuation[0])
        progress.done()

        let r = blob.report
        let contextText = (try? model.tokenizer.decode(Array(window.context.suffix(40)))) ?? ""
        print("kvtc demo — \(URL(fileURLWithPath: model.path).lastPathComponent), held-out \(window.name), \(window.context.count)-token context")
        print(String(repeating: "─", count: 100))
        print(String(format: "cache size     exact fp16 %@  ->  compressed %@   (%.1fx whole cache; %.1fx over the %d compressed tokens, all bytes counted)",
                     formatBytes(r.cacheFP16Bytes), formatBytes(r.totalBytes), r.wholeCacheRatio, r.ratio, r.compressedTokens))
        if let m = r.outOfWindowTokens, let layers = profile.outOfWindow?.layers {
            // The window saving as its own figure: the same cache with every layer kept.
            var everyLayer = compressor
            everyLayer.trimsWindows = false
            let kept = try everyLayer.compress(exact).report
            print(String(format: "sliding window %d of the compressed tokens keep only the %d full-context layers of %d (no window reads them again): %.1fx whole cache, against %.1fx keeping every layer",
                         m, layers.count, model.geometry.layers, r.wholeCacheRatio, kept.wholeCacheRatio))
        }
        print(String(format: "quality        mean KL %.4f nats, top-1 agreement %.1f%%, perplexity %.2f exact vs %.2f decoded (%d tokens)",
                     metrics.meanKL, 100 * metrics.top1, exp(metrics.nllReference), exp(metrics.nllCandidate), metrics.positions))
        print(String(format: "time           restore %.3f s  vs  recompute prefill %.3f s  (%.1fx faster); compress %.3f s",
                     restore, recompute, recompute / restore, compressTime))
        print(String(repeating: "─", count: 100))
        print("…" + oneLine(contextText))
        let width = 48
        let left = wrap(oneLine(textExact), width), right = wrap(oneLine(textDecoded), width)
        print("\("EXACT CACHE".padding(toLength: width, withPad: " ", startingAt: 0)) │ KVTC \(Profile.formatRatio(ratio)) CACHE")
        for i in 0..<max(left.count, right.count) {
            let l = i < left.count ? left[i] : "", rr = i < right.count ? right[i] : ""
            print("\(l.padding(toLength: width, withPad: " ", startingAt: 0)) │ \(rr)")
        }
    }

    /// The first continuation token, then greedy generation from `cache`.
    private func greedy(model: any LanguageModel, cache: KVCache, first: Int) throws -> String {
        var c = cache
        let logits = try model.decodeStep(token: first, cache: &c)
        let reply = try model.generate(after: logits, cache: &c, maxTokens: generate - 1)
        return ((try? model.tokenizer.decode([first])) ?? "") + reply.text
    }

    private func oneLine(_ s: String) -> String {
        s.replacingOccurrences(of: "\n", with: "⏎ ").replacingOccurrences(of: "\t", with: " ")
    }

    private func wrap(_ s: String, _ width: Int) -> [String] {
        var lines: [String] = []
        var cur = ""
        for ch in s {
            if cur.count >= width { lines.append(cur); cur = "" }
            cur.append(ch)
        }
        if !cur.isEmpty { lines.append(cur) }
        return lines
    }
}
