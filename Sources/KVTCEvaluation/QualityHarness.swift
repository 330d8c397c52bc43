import Foundation
import KVTCCalibration
import KVTCCache
import KVTCCodec
import KVTCModels
import KVTCNumerics

/// One held-out window: a context that is cached and compressed, and a continuation fed
/// teacher-forced on top of it.
public struct EvaluationWindow: Sendable {
    public var name: String
    /// BOS followed by the context tokens.
    public var context: [Int]
    /// Tokens fed after the context; the metrics score the predictions of tokens 1...
    public var continuation: [Int]
}

/// One method's result averaged over windows.
public struct MethodResult: Codable, Sendable {
    public var method: String
    public var setting: String
    public var nominal_ratio: Double?
    /// Ratio over the compressed tokens after entropy coding, every byte counted.
    public var effective_ratio: Double
    public var ratio_before_entropy: Double
    public var whole_cache_ratio: Double
    public var mean_kl: Double
    public var top1: Double
    public var ppl_exact: Double
    public var ppl_decoded: Double
    public var rel_err_keys: Double
    public var rel_err_values: Double
    public var windows: Int
    public var compress_seconds: Double
    public var decompress_seconds: Double
}

/// Settings of the quality protocol.
public struct HarnessOptions: Sendable {
    public var contextTokens = 1024
    public var continuationTokens = 64
    public var windowsPerText = 2
    public init() {}
}

/// The quality protocol of DESIGN.md: exact cache -> compress/decompress -> the same
/// continuation teacher-forced with the exact and the decoded cache -> compare the
/// next-token distributions.
public final class QualityHarness: @unchecked Sendable {
    public let model: any LanguageModel
    public let windows: [EvaluationWindow]
    /// Exact caches and exact continuation logits, per window.
    private var exactCaches: [KVCache] = []
    private var exactLogits: [[Float]] = []

    /// Cuts `windowsPerText` windows of `contextTokens + continuationTokens + 1` tokens out
    /// of each document (evenly spaced; documents too short for one are skipped).
    public static func windows(model: any LanguageModel, documents: [Corpus.Document], options: HarnessOptions) -> [EvaluationWindow] {
        let need = options.contextTokens - 1 + options.continuationTokens + 1
        var out: [EvaluationWindow] = []
        for d in documents {
            let ids = model.tokenizer.encode(d.text)
            guard ids.count >= need else { continue }
            let count = min(options.windowsPerText, max(1, ids.count / need))
            for w in 0..<count {
                let start = count == 1 ? 0 : (ids.count - need) * w / (count - 1)
                let slice = Array(ids[start..<(start + need)])
                out.append(EvaluationWindow(name: "\(d.name)#\(w)",
                                            context: [model.tokenizer.bosID ?? 1] + slice[0..<(options.contextTokens - 1)],
                                            continuation: Array(slice[(options.contextTokens - 1)...])))
            }
        }
        return out
    }

    /// Prepares exact caches and logits; with a score book, records attention scores too.
    public init(model: any LanguageModel, windows: [EvaluationWindow], scoreBook: AttentionScoreBook? = nil,
                progress: (String) -> Void = { _ in }) throws {
        self.model = model
        self.windows = windows
        for (i, w) in windows.enumerated() {
            progress("exact caches and logits: window \(i + 1)/\(windows.count)")
            var cache: KVCache
            if let scoreBook {
                cache = try scoreBook.prefill(model: model, tokens: w.context)
            } else {
                cache = model.makeCache(reservingCapacity: w.context.count + w.continuation.count)
                _ = try model.prefill(tokens: w.context, cache: &cache, logits: .none)
            }
            exactCaches.append(cache)
            var c2 = cache
            exactLogits.append(try model.prefill(tokens: Array(w.continuation.dropLast()), cache: &c2, logits: .all).elements)
        }
    }

    /// The exact cache of a window.
    public func exactCache(_ i: Int) -> KVCache { exactCaches[i] }

    /// Runs one method over every window.
    public func evaluate(_ compressor: any CacheCompressor) throws -> MethodResult {
        var kl = 0.0, top1 = 0.0, nllE = 0.0, nllD = 0.0, rk = 0.0, rv = 0.0
        var fp16 = 0, stored = 0, before = 0, total = 0, whole = 0
        var tc = 0.0, td = 0.0
        var nominal: Double?
        let v = model.dimensions.vocabularySize
        for (i, w) in windows.enumerated() {
            let exact = exactCaches[i]
            let (blob, c) = try Stopwatch.time { try compressor.compress(exact) }
            let (decoded, d) = try Stopwatch.time { try compressor.decompress(blob.bytes) }
            tc += c; td += d
            nominal = blob.report.nominalRatio
            fp16 += blob.report.compressedTokensFP16Bytes
            stored += blob.report.compressedTokensBytes
            before += blob.report.compressedTokensBytesBeforeEntropy
            total += blob.report.totalBytes
            whole += blob.report.cacheFP16Bytes
            var cache = decoded
            let start = exact.positions.last! + 1
            let logits = try model.prefill(tokens: Array(w.continuation.dropLast()), cache: &cache, startPosition: start, logits: .all)
            let m = compareDistributions(reference: exactLogits[i], candidate: logits.elements, vocabulary: v,
                                         targets: Array(w.continuation.dropFirst()))
            kl += m.meanKL; top1 += m.top1; nllE += m.nllReference; nllD += m.nllCandidate
            let e = relativeErrors(exact: exact, decoded: decoded)
            rk += e.keys; rv += e.values
        }
        let n = Double(windows.count)
        return MethodResult(method: compressor.method, setting: compressor.setting, nominal_ratio: nominal,
                            effective_ratio: Double(fp16) / Double(max(stored, 1)),
                            ratio_before_entropy: Double(fp16) / Double(max(before, 1)),
                            whole_cache_ratio: Double(whole) / Double(max(total, 1)),
                            mean_kl: kl / n, top1: top1 / n, ppl_exact: exp(nllE / n), ppl_decoded: exp(nllD / n),
                            rel_err_keys: rk / n, rel_err_values: rv / n, windows: windows.count,
                            compress_seconds: tc / n, decompress_seconds: td / n)
    }
}
