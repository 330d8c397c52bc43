import Foundation
import KVTCCache
import KVTCCodec
import KVTCEvaluation
import KVTCNumerics

/// Figures of one `kvtc bench codec` run (field names as in the committed JSON).
public struct CodecBenchResult: Codable, Sendable {
    public var source: String
    public var tokens: Int
    public var geometry: KVGeometry
    public var ratio: Double
    public var input_bytes: Int
    public var blob_bytes: Int
    public var compressed_tokens_ratio: Double
    public var whole_cache_ratio: Double
    public var key_components: Int
    public var value_components: Int
    public var calibrate_seconds: Double?
    public var calibration_rows: Int?
    public var compress_seconds: Double
    public var decompress_seconds: Double
    public var compress_gemm_seconds: Double
    public var decompress_gemm_seconds: Double
    public var gemm_gflops: Double
    public var compress_mb_per_second: Double
    public var decompress_mb_per_second: Double
    public var compress_over_gemm: Double
    public var decompress_over_gemm: Double
    public var relative_error_keys: Double
    public var relative_error_values: Double
    public var threads: Int
    /// The backend of the figures above (`openblas`, `onednn`) and the ISA oneDNN uses.
    public var backend: String
    public var onednn_isa: String
    /// The f32 OpenBLAS path in the same run, when the backend is another.
    public var reference: ReferencePath?
    /// The arithmetic of the decompress figures above (`bf16` or `int8`; OpenBLAS: `f32`).
    public var reconstruction: String
    /// With 8-bit integer reconstruction, the same blob decompressed with bfloat16 products
    /// in the same run.
    public var bf16_reconstruction: ReconstructionPath?
}

/// A decompression of the benchmark's blob with another reconstruction arithmetic.
public struct ReconstructionPath: Codable, Sendable {
    public var decompress_seconds: Double
    public var decompress_mb_per_second: Double
    /// The reconstruction products alone (both streams, the restore's whole rows) and their rate.
    public var gemm_seconds: Double
    public var gemm_gops: Double
    /// The main path's reconstruction products alone, for comparison.
    public var main_gemm_seconds: Double
    public var main_gemm_gops: Double
    /// Against the f32 path's decoded cache, when it ran (`nil` otherwise).
    public var relative_squared_difference_keys: Double?
    public var relative_squared_difference_values: Double?
    /// `||decoded - original||^2 / ||original||^2` with this arithmetic.
    public var relative_error_keys: Double
    public var relative_error_values: Double
}

/// The f32 OpenBLAS path measured beside another backend.
public struct ReferencePath: Codable, Sendable {
    public var compress_seconds: Double
    public var decompress_seconds: Double
    public var compress_mb_per_second: Double
    public var decompress_mb_per_second: Double
    public var gemm_gflops: Double
    /// `||backend - f32||^2 / ||f32||^2` of the decoded caches' keys and values.
    public var relative_squared_difference_keys: Double
    public var relative_squared_difference_values: Double
}

/// Times compression and decompression of one cache against their projection GEMMs alone.
public struct CodecBenchmark: Sendable {
    /// Tokens of the synthetic cache (when no cache is given).
    public var tokens = 8192
    /// Nominal ratio.
    public var ratio: Double = 16
    /// Calibration rows of the synthetic profile (when no profile is given).
    public var calibrationRows = 16384
    /// The lossless coder of the blob's chunks.
    public var coder = KVTCCompressor.defaultCoder
    /// How the codes are stored.
    public var codeCoding = KVTCCompressor.defaultCodeCoding
    /// Timed repetitions; the best is reported.
    public var repeats = 3
    /// The backend timed (the f32 OpenBLAS path is timed beside any other).
    public var backend = GEMMBackend.preferred
    /// The arithmetic of the oneDNN backend's whole-cache reconstruction (with `int8`, the
    /// run also decompresses with `bf16` for comparison).
    public var reconstruction = ReconstructionArithmetic.preferred

    public init() {}

    /// The measured figures, the last blob and the compressor that made it.
    public struct Outcome: Sendable {
        public var result: CodecBenchResult
        public var blob: CompressedCache
        public var compressor: KVTCCompressor
    }

    /// Runs the benchmark on `cache` with `profile`; without a profile, calibrates one on
    /// synthetic caches of the embedded model's geometry (30 layers x 3 kv heads x 64);
    /// without a cache, times a synthetic one.
    public func run(profile given: Profile?, cache: KVCache?, source: String = "synthetic",
                    progress: @escaping (String) -> Void = { _ in }) throws -> Outcome {
        let geometry = KVGeometry(layers: 30, kvHeads: 3, headDim: 64)
        let rope = RoPE(layout: .interleaved, theta: 100_000, rotaryDims: 64)
        var calibrateSeconds: Double?
        let prof: Profile
        if let given {
            prof = given
        } else {
            progress("generating \(calibrationRows) synthetic calibration rows")
            let calib = SyntheticCaches.cache(geometry: geometry, rope: rope, tokens: calibrationRows + 4, seed: 1)
            var options = CalibrationOptions()
            options.ratios = [ratio]
            let sw = Stopwatch()
            prof = try Calibrator.calibrate(caches: [calib], options: options,
                                            provenance: Provenance(rows: 0, sources: [], model: "synthetic"),
                                            progress: { progress("calibrating: \($0)") })
            calibrateSeconds = sw.elapsed
        }
        let input: KVCache
        if let cache { input = cache } else {
            progress("generating a \(tokens)-token synthetic cache")
            input = SyntheticCaches.cache(geometry: prof.geometry, rope: prof.rope, tokens: tokens, seed: 2)
        }
        /// Best compress and decompress times with `backend`, the last blob and its decoding,
        /// and the GEMMs alone.
        func measure(_ backend: GEMMBackend) throws -> (c: Double, d: Double, blob: CompressedCache, restored: KVCache,
                                                      compressor: KVTCCompressor, gemm: (compress: Double, decompress: Double, gflops: Double)) {
            var compressor = try KVTCCompressor(profile: prof, ratio: ratio, coder: coder, backend: backend,
                                                reconstruction: reconstruction)
            compressor.codeCoding = codeCoding
            var best = (c: Double.infinity, d: Double.infinity)
            var last: (CompressedCache, KVCache)?
            for i in 0..<max(1, repeats) {
                progress("timing compress/decompress with \(backend) (\(i + 1)/\(repeats))")
                let (b, tc) = try Stopwatch.time { try compressor.compress(input) }
                let (r, td) = try Stopwatch.time { try compressor.decompress(b.bytes) }
                best = (min(best.c, tc), min(best.d, td))
                last = (b, r)
            }
            guard let (blob, restored) = last else { preconditionFailure("at least one repetition runs") }
            progress("timing the projection GEMMs alone with \(backend)")
            let n = blob.report.compressedTokens
            let p = prof.geometry.featuresPerToken
            let rk = compressor.plan.keys.componentsUsed, rv = compressor.plan.values.componentsUsed
            let m = blob.report.outOfWindowTokens ?? 0
            var gemm = ProjectionGEMM.times(tokens: n - m, features: p, keyRank: rk, valueRank: rv, repeats: repeats, backend: backend)
            if m > 0, let w = prof.outOfWindow, let o = compressor.plan.outOfWindow {
                // Tokens every window has passed: the full-context layers on their own bases.
                let rest = ProjectionGEMM.times(tokens: m, features: w.layers.count * prof.geometry.featuresPerLayer,
                                                keyRank: o.keys.componentsUsed, valueRank: o.values.componentsUsed, repeats: repeats,
                                                backend: backend)
                gemm = (gemm.compress + rest.compress, gemm.decompress + rest.decompress, gemm.gflops)
            }
            return (best.c, best.d, blob, restored, compressor, gemm)
        }
        let measured = try measure(backend)
        let (blob, restored, compressor, gemm) = (measured.blob, measured.restored, measured.compressor, measured.gemm)
        let best = (c: measured.c, d: measured.d)
        let rk = compressor.plan.keys.componentsUsed, rv = compressor.plan.values.componentsUsed
        // Over the rows a later query can read (a window-trimmed blob restores the others as zeros).
        let errors = relativeErrors(exact: input, decoded: restored)
        let inputBytes = input.fp16Bytes
        var reference: ReferencePath?
        func difference(_ a: [Float], _ b: [Float]) -> Double {
            var num = 0.0, den = 0.0
            for i in a.indices { let d = Double(a[i] - b[i]); num += d * d; den += Double(b[i]) * Double(b[i]) }
            return num / max(den, 1e-30)
        }
        var f32Restored: KVCache?
        if backend != .openblas {
            let f32 = try measure(.openblas)
            f32Restored = f32.restored
            reference = ReferencePath(compress_seconds: f32.c, decompress_seconds: f32.d,
                                      compress_mb_per_second: Double(inputBytes) / f32.c / 1e6,
                                      decompress_mb_per_second: Double(inputBytes) / f32.d / 1e6, gemm_gflops: f32.gemm.gflops,
                                      relative_squared_difference_keys: difference(restored.keys, f32.restored.keys),
                                      relative_squared_difference_values: difference(restored.values, f32.restored.values))
        }
        var result = CodecBenchResult(
            source: source, tokens: input.tokenCount, geometry: prof.geometry, ratio: ratio, input_bytes: inputBytes,
            blob_bytes: blob.bytes.count, compressed_tokens_ratio: blob.report.ratio, whole_cache_ratio: blob.report.wholeCacheRatio,
            key_components: rk, value_components: rv, calibrate_seconds: calibrateSeconds,
            calibration_rows: calibrateSeconds == nil ? nil : calibrationRows,
            compress_seconds: best.c, decompress_seconds: best.d,
            compress_gemm_seconds: gemm.compress, decompress_gemm_seconds: gemm.decompress, gemm_gflops: gemm.gflops,
            compress_mb_per_second: Double(inputBytes) / best.c / 1e6, decompress_mb_per_second: Double(inputBytes) / best.d / 1e6,
            compress_over_gemm: best.c / gemm.compress, decompress_over_gemm: best.d / gemm.decompress,
            relative_error_keys: errors.keys, relative_error_values: errors.values,
            threads: BLAS.threadCount, backend: backend.rawValue, onednn_isa: OneDNN.isa, reference: reference,
            reconstruction: backend == .openblas ? "f32"
                : compressor.reconstructsInInt8.keys || compressor.reconstructsInInt8.values ? "int8" : "bf16")
        if backend == .onednn, compressor.reconstructsInInt8.keys || compressor.reconstructsInInt8.values {
            var other = try KVTCCompressor(profile: prof, ratio: ratio, coder: coder, backend: backend, reconstruction: .bf16)
            other.codeCoding = codeCoding
            var seconds = Double.infinity
            var decoded: KVCache?
            for i in 0..<max(1, repeats) {
                progress("timing decompress with bf16 reconstruction (\(i + 1)/\(repeats))")
                let (r, t) = try Stopwatch.time { try other.decompress(blob.bytes) }
                seconds = min(seconds, t)
                decoded = r
            }
            progress("timing the reconstruction products alone in int8 and bf16")
            let n = blob.report.compressedTokens - (blob.report.outOfWindowTokens ?? 0)
            let products = ProjectionGEMM.reconstructionTimes(tokens: n, features: prof.geometry.featuresPerToken,
                                                              ranks: [rk, rv], repeats: repeats)
            let e = relativeErrors(exact: input, decoded: decoded!)
            result.bf16_reconstruction = ReconstructionPath(
                decompress_seconds: seconds, decompress_mb_per_second: Double(inputBytes) / seconds / 1e6,
                gemm_seconds: products.bf16, gemm_gops: products.flops / products.bf16 / 1e9,
                main_gemm_seconds: products.int8, main_gemm_gops: products.flops / products.int8 / 1e9,
                relative_squared_difference_keys: f32Restored.map { difference(decoded!.keys, $0.keys) },
                relative_squared_difference_values: f32Restored.map { difference(decoded!.values, $0.values) },
                relative_error_keys: e.keys, relative_error_values: e.values)
        }
        return Outcome(result: result, blob: blob, compressor: compressor)
    }

}

/// Times the projection GEMMs of compression and decompression on their own.
public enum ProjectionGEMM {
    /// Best times of the whole-row reconstruction products of `tokens` rows at each rank in
    /// `ranks` (summed), with packed bfloat16 and packed 8-bit integer bases as the codec
    /// holds them (the int8 time includes quantizing the coefficients), and their FLOPs.
    public static func reconstructionTimes(tokens n: Int, features p: Int, ranks: [Int], repeats: Int)
        -> (bf16: Double, int8: Double, flops: Double) {
        var out = [Float](repeating: 0, count: n * p)
        var best16 = Double.infinity, best8 = Double.infinity
        let prepared = ranks.map { r -> (y: [Float], half: BF16Weights?, integer: Int8Weights?) in
            let basis = (0..<(r * p)).map { Float(($0 * 7919) % 201 - 100) * 1e-3 }
            let y = (0..<(n * r)).map { Float(($0 * 104729) % 255 - 127) * 1e-2 }
            guard r > 0 else { return (y, nil, nil) }
            return (y, try? BF16Weights(transposed: basis, outFeatures: p, inFeatures: r),
                    try? Int8Weights(basis, inFeatures: r, outFeatures: p))
        }
        var q = [Int8](repeating: 0, count: n * (ranks.max() ?? 0))
        var scales = [Float](repeating: 0, count: n)
        for _ in 0..<max(1, repeats) {
            let s16 = Stopwatch()
            for (i, r) in ranks.enumerated() where r > 0 {
                prepared[i].y.withUnsafeBufferPointer { y in out.withUnsafeMutableBufferPointer { o in
                    try? prepared[i].half?.apply(y.baseAddress!, rows: n, into: o.baseAddress!, accumulate: false)
                } }
            }
            best16 = min(best16, s16.elapsed)
            let s8 = Stopwatch()
            for (i, r) in ranks.enumerated() where r > 0 {
                prepared[i].y.withUnsafeBufferPointer { y in q.withUnsafeMutableBufferPointer { qb in
                    scales.withUnsafeMutableBufferPointer { sb in out.withUnsafeMutableBufferPointer { o in
                        Int8Weights.quantizeRows(y.baseAddress!, rows: n, columns: r, columnFactors: nil,
                                                 into: qb.baseAddress!, rowScales: sb.baseAddress!)
                        try? prepared[i].integer?.apply(qb.baseAddress!, rows: n, into: o.baseAddress!, ldy: p)
                    } }
                } }
            }
            best8 = min(best8, s8.elapsed)
        }
        return (best16, best8, 2.0 * Double(n) * Double(p) * Double(ranks.reduce(0, +)))
    }

    /// With ``GEMMBackend/onednn``, the basis is converted to bfloat16 once (as the codec's
    /// tables are) and every product converts its f32 left operand.
    public static func times(tokens n: Int, features p: Int, keyRank rk: Int, valueRank rv: Int, repeats: Int,
                             backend: GEMMBackend = .openblas) -> (compress: Double, decompress: Double, gflops: Double)
    {
        let x = [Float](repeating: 0.5, count: n * p)
        var y = [Float](repeating: 0, count: n * max(rk, rv))
        let basis = [Float](repeating: 0.01, count: max(rk, rv) * p)
        var out = [Float](repeating: 0, count: n * p)
        let half = backend == .onednn ? [rk, rv].map { r in try? BF16Matrix(Array(basis[0..<(r * p)]), rows: r, columns: p) } : []
        var bestC = Double.infinity, bestD = Double.infinity
        for _ in 0..<repeats {
            let sc = Stopwatch()
            for (i, r) in [rk, rv].enumerated() {
                x.withUnsafeBufferPointer { a in basis.withUnsafeBufferPointer { b in y.withUnsafeMutableBufferPointer { c in
                    if let m = half.isEmpty ? nil : half[i] {
                        try? m.multiply(a.baseAddress!, rows: n, lda: p, transposed: true, into: c.baseAddress!, ldc: r)
                    } else {
                        BLAS.gemm(.normal, .transposed, m: n, n: r, k: p, a: a.baseAddress!, lda: p, b: b.baseAddress!, ldb: p, c: c.baseAddress!, ldc: r)
                    }
                } } }
            }
            bestC = min(bestC, sc.elapsed)
            let sd = Stopwatch()
            for (i, r) in [rk, rv].enumerated() {
                y.withUnsafeBufferPointer { a in basis.withUnsafeBufferPointer { b in out.withUnsafeMutableBufferPointer { c in
                    if let m = half.isEmpty ? nil : half[i] {
                        try? m.multiply(a.baseAddress!, rows: n, lda: r, transposed: false, into: c.baseAddress!, ldc: p)
                    } else {
                        BLAS.gemm(m: n, n: p, k: r, a: a.baseAddress!, lda: r, b: b.baseAddress!, ldb: p, c: c.baseAddress!, ldc: p)
                    }
                } } }
            }
            bestD = min(bestD, sd.elapsed)
        }
        let flops = 2.0 * Double(n) * Double(p) * Double(rk + rv)
        return (bestC, bestD, 2 * flops / (bestC + bestD) / 1e9)
    }
}

/// Synthetic caches with a decaying spectrum, for benchmarks without a model.
public enum SyntheticCaches {
    /// Rows `Z * diag(sigma) * M + bias` with `sigma_j = (1 + j)^-0.75` and Gaussian `M`,
    /// keys rotated by RoPE, rounded to fp16.
    public static func cache(geometry: KVGeometry, rope: RoPE, tokens: Int, seed: UInt64) -> KVCache {
        let p = geometry.featuresPerToken
        func stream(_ s: UInt64, bias: Bool) -> [Float] {
            let mix = gaussian(count: p * p, seed: 77 + (bias ? 1 : 0), scale: 1 / Float(p).squareRoot())
            var z = gaussian(count: tokens * p, seed: s, scale: 1)
            for t in 0..<tokens { for j in 0..<p { z[t * p + j] *= pow(Float(1 + j), -0.75) * 4 } }
            var x = [Float](repeating: 0, count: tokens * p)
            z.withUnsafeBufferPointer { a in mix.withUnsafeBufferPointer { b in x.withUnsafeMutableBufferPointer { c in
                BLAS.gemm(m: tokens, n: p, k: p, a: a.baseAddress!, lda: p, b: b.baseAddress!, ldb: p, c: c.baseAddress!, ldc: p)
            } } }
            if bias {
                let b = gaussian(count: p, seed: 99, scale: 1)
                for t in 0..<tokens { for j in 0..<p { x[t * p + j] += b[j] } }
            }
            return x
        }
        var keys = stream(seed &* 2, bias: true)
        let values = stream(seed &* 2 + 1, bias: false).map { Float(Float16($0)) }
        let positions = Array(0..<tokens)
        keys.withUnsafeMutableBufferPointer {
            rope.rotate(rows: $0.baseAddress!, rowLength: p, positions: positions, headDim: geometry.headDim, inverse: false)
        }
        keys = keys.map { Float(Float16($0)) }
        return try! KVCache(geometry: geometry, rope: rope, positions: positions, keys: keys, values: values, model: "synthetic")
    }

    static func gaussian(count: Int, seed: UInt64, scale: Float) -> [Float] {
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { buf in
            let box = UncheckedSendable(buf)
            Parallel.forEachRange(count / 2, minimumPerTask: 1 << 16) { range in
                var random = SplitMix64(seed: seed &+ UInt64(range.lowerBound) &* 0x9E37_79B9_7F4A_7C15)
                func next() -> Float { (Float(random.next() >> 40) + 0.5) / Float(1 << 24) }
                for i in range {
                    let u = next(), v = next()
                    let r = (-2 * log(u)).squareRoot() * scale
                    box.value[2 * i] = r * cos(2 * .pi * v)
                    box.value[2 * i + 1] = r * sin(2 * .pi * v)
                }
            }
        }
        return out
    }
}
