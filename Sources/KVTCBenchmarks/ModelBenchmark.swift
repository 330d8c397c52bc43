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

/// One projection's product rate at one number of rows, with each library.
public struct ProjectionRate: Sendable, Codable, Equatable {
    public var name: String
    /// Rows multiplied at once: 1 is a decode step, the prefill chunk a prefill.
    public var rows: Int
    public var outFeatures: Int
    public var inFeatures: Int
    /// oneDNN with packed bfloat16 weights, in GFLOP/s (`nil` without a bfloat16 matmul).
    public var bf16Gflops: Double?
    /// OpenBLAS with f32 weights, in GFLOP/s.
    public var f32Gflops: Double

    enum CodingKeys: String, CodingKey {
        case name, rows
        case outFeatures = "out_features"
        case inFeatures = "in_features"
        case bf16Gflops = "bf16_gflops"
        case f32Gflops = "f32_gflops"
    }
}

/// `kvtc bench model`'s figures: the model at its precision, the f32 reference path in the
/// same run, and each projection's product rate with both libraries.
public struct ModelBenchmarkReport: Sendable, Codable, Equatable {
    /// The precision the model ran at (`bf16`, `f32`).
    public var precision: String
    /// What oneDNN dispatched to on this CPU.
    public var onednnISA: String
    public var model: ModelBenchmarkResult
    /// The same benchmark at f32 (OpenBLAS), when the model ran at another precision.
    public var reference: ModelBenchmarkResult?
    public var projections: [ProjectionRate]

    public init(precision: String, onednnISA: String, model: ModelBenchmarkResult, reference: ModelBenchmarkResult?,
                projections: [ProjectionRate]) {
        self.precision = precision
        self.onednnISA = onednnISA
        self.model = model
        self.reference = reference
        self.projections = projections
    }

    enum CodingKeys: String, CodingKey {
        case precision, model, reference, projections
        case onednnISA = "onednn_isa"
    }
}

/// Measures GEMM, prefill and decode throughput.
public enum ModelBenchmark {
    /// Product rates of `projections` at each of `rows`, with oneDNN's packed bfloat16
    /// weights (where it has a bfloat16 matmul) and OpenBLAS's f32 ones, best of
    /// `repeats`. A one-row product cycles through `layers` copies of a block's weight, as a
    /// decode step reads each layer's own from memory.
    public static func projectionRates(_ projections: [ProjectionShape], layers: Int, rows: [Int],
                                       repeats: Int = 3) -> [ProjectionRate] {
        var rates: [ProjectionRate] = []
        for shape in projections {
            let out = shape.outFeatures, inF = shape.inFeatures
            var rng = SplitMix64(seed: UInt64(out * 31 + inF))
            let weight = (0..<(out * inF)).map { _ in Float(Int(rng.next() % 2001) - 1000) / 1000 }
            let bf16 = OneDNN.canMultiplyBF16 ? try? BF16Weights(weight, outFeatures: out, inFeatures: inF) : nil
            for m in rows {
                let copies = m == 1 && shape.perLayer ? layers : 1
                let f32Copies = (0..<copies).map { _ in weight.withUnsafeBufferPointer { Array($0) } } // own storage each
                let bf16Copies = bf16 == nil ? [] : (0..<copies).compactMap { _ in try? BF16Weights(weight, outFeatures: out, inFeatures: inF) }
                let x = (0..<(m * inF)).map { _ in Float(Int(rng.next() % 2001) - 1000) / 1000 }
                var y = [Float](repeating: 0, count: m * out)
                let flops = 2 * Double(m) * Double(out) * Double(inF) * Double(copies)
                func best(_ body: () -> Void) -> Double {
                    body()
                    var t = Double.infinity
                    for _ in 0..<max(1, repeats) { let s = Stopwatch(); body(); t = min(t, s.elapsed) }
                    return flops / t / 1e9
                }
                let f32 = best {
                    x.withUnsafeBufferPointer { xp in
                        y.withUnsafeMutableBufferPointer { yp in
                            for w in f32Copies {
                                w.withUnsafeBufferPointer { wp in
                                    if m == 1 {
                                        BLAS.gemv(.normal, m: out, n: inF, a: wp.baseAddress!, lda: inF, x: xp.baseAddress!, y: yp.baseAddress!)
                                    } else {
                                        BLAS.gemm(.normal, .transposed, m: m, n: out, k: inF, a: xp.baseAddress!, lda: inF,
                                                  b: wp.baseAddress!, ldb: inF, c: yp.baseAddress!, ldc: out)
                                    }
                                }
                            }
                        }
                    }
                }
                let half: Double? = bf16Copies.count == copies ? best {
                    x.withUnsafeBufferPointer { xp in
                        y.withUnsafeMutableBufferPointer { yp in
                            for w in bf16Copies { try? w.apply(xp.baseAddress!, rows: m, into: yp.baseAddress!, accumulate: false) }
                        }
                    }
                } : nil
                rates.append(ProjectionRate(name: shape.name, rows: m, outFeatures: out, inFeatures: inF,
                                            bf16Gflops: half, f32Gflops: f32))
            }
        }
        return rates
    }

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
