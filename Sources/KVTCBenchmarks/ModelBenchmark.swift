import KVTCModels
import KVTCNumerics

/// Throughput of the model on this machine.
public struct ModelBenchmarkResult: Sendable, Codable, Equatable {
    /// Prefill tokens per second, keyed by prompt length ("512", "2048").
    public var prefillTokensPerSecond: [String: Double]
    /// Decode tokens per second (greedy steps after a 512-token prefill).
    public var decodeTokensPerSecond: Double
    /// Useful GFLOP/s of the 2048-token prefill (block matmuls + causal attention + last logits).
    public var prefillUsefulGflops2048: Double
    /// Single-precision GEMM rate (2048^3, best of 3) in GFLOP/s.
    public var gemmGflops: Double
    /// `prefillUsefulGflops2048 / gemmGflops`.
    public var prefillGemmEfficiency: Double
    /// Tokens per second of prefilling 512 new tokens after a cache of the given context
    /// (key `"3584+512"`): the work of a chat turn after its history was restored.
    public var extendTokensPerSecond: [String: Double]

    enum CodingKeys: String, CodingKey {
        case prefillTokensPerSecond = "prefill_tokens_per_second"
        case decodeTokensPerSecond = "decode_tokens_per_second"
        case prefillUsefulGflops2048 = "prefill_useful_gflops_2048"
        case gemmGflops = "gemm_gflops"
        case prefillGemmEfficiency = "prefill_gemm_efficiency"
        case extendTokensPerSecond = "extend_tokens_per_second"
    }
}

/// Measures GEMM, prefill and decode throughput.
public enum ModelBenchmark {
    /// Useful floating-point operations of prefilling `tokens` tokens into an empty cache:
    /// `2 * blockMatrixParameters` per token, causal attention (`QK^T` and `PV`, each
    /// `2 * headDim` per visible key per query head) and the last token's logits.
    public static func prefillFlops(_ c: ModelDimensions, tokens n: Int) -> Double {
        let matmul = 2.0 * Double(c.blockMatrixParameters) * Double(n)
        let visible = Double(n) * Double(n + 1) / 2
        let attention = Double(c.layers * c.heads) * visible * 4.0 * Double(c.headDim)
        let logits = 2.0 * Double(c.embedding) * Double(c.vocabularySize)
        return matmul + attention + logits
    }

    /// Best-of-`repeats` SGEMM rate for `size x size x size`, in GFLOP/s.
    public static func gemmGflops(size: Int = 2048, repeats: Int = 3) -> Double {
        var a = [Float](repeating: 0, count: size * size)
        for i in a.indices { a[i] = Float((i * 7919) % 1000) / 1000 - 0.5 }
        let b = a
        var c = [Float](repeating: 0, count: size * size)
        var best = Double.infinity
        for _ in 0..<repeats {
            let s = Stopwatch()
            a.withUnsafeBufferPointer { ap in
                b.withUnsafeBufferPointer { bp in
                    c.withUnsafeMutableBufferPointer { cp in
                        BLAS.gemm(m: size, n: size, k: size, a: ap.baseAddress!, lda: size,
                                  b: bp.baseAddress!, ldb: size, c: cp.baseAddress!, ldc: size)
                    }
                }
            }
            best = min(best, s.elapsed)
        }
        return 2 * Double(size) * Double(size) * Double(size) / best / 1e9
    }

    /// Runs the benchmark: GEMM rate, prefill at `prefillLengths`, and `decodeSteps`
    /// decode steps after a 512-token prefill. Prompts are deterministic token ids.
    ///
    /// Each prefill length is timed `repeats` times and the best run is kept, so a briefly
    /// busy machine does not distort the result.
    public static func run(model: any LanguageModel, prefillLengths: [Int] = [512, 2048], extendContexts: [Int] = [1536, 3584],
                           decodeSteps: Int = 64, repeats: Int = 2) throws(ModelError) -> ModelBenchmarkResult {
        let gemm = gemmGflops()
        let vocab = model.dimensions.vocabularySize
        func prompt(_ n: Int) -> [Int] { (0..<n).map { 100 + ($0 * 7919) % (vocab - 100) } }
        // Warm up (page in weights, spin up BLAS threads).
        var warm = model.makeCache()
        _ = try model.prefill(tokens: prompt(64), cache: &warm, logits: .last)

        var rates: [String: Double] = [:]
        var useful2048 = 0.0
        for n in prefillLengths {
            let tokens = prompt(n)
            var best = Double.infinity
            for _ in 0..<max(1, repeats) {
                var cache = model.makeCache(reservingCapacity: n)
                let s = Stopwatch()
                _ = try model.prefill(tokens: tokens, cache: &cache, logits: .last)
                best = min(best, s.elapsed)
            }
            rates[String(n)] = Double(n) / best
            if n == 2048 { useful2048 = prefillFlops(model.dimensions, tokens: n) / best / 1e9 }
        }

        var extend: [String: Double] = [:]
        for context in extendContexts {
            var base = model.makeCache(reservingCapacity: context)
            _ = try model.prefill(tokens: prompt(context + 512).prefix(context).map { $0 }, cache: &base, logits: .none)
            let tokens = Array(prompt(context + 512).suffix(512))
            var best = Double.infinity
            for _ in 0..<max(1, repeats) {
                var cache = base
                cache.reserveCapacity(tokens: context + 512)
                let s = Stopwatch()
                _ = try model.prefill(tokens: tokens, cache: &cache, logits: .last)
                best = min(best, s.elapsed)
            }
            extend["\(context)+512"] = 512 / best
        }

        var cache = model.makeCache(reservingCapacity: 512 + decodeSteps)
        var logits = try model.prefill(tokens: prompt(512), cache: &cache, logits: .last).elements
        let s = Stopwatch()
        for _ in 0..<decodeSteps {
            logits = try model.decodeStep(token: Sampler.argmax(logits), cache: &cache)
        }
        let decode = Double(decodeSteps) / s.elapsed
        return ModelBenchmarkResult(prefillTokensPerSecond: rates, decodeTokensPerSecond: decode,
                                    prefillUsefulGflops2048: useful2048, gemmGflops: gemm,
                                    prefillGemmEfficiency: gemm > 0 ? useful2048 / gemm : 0,
                                    extendTokensPerSecond: extend)
    }
}
