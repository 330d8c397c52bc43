import ArgumentParser
import Foundation
import KVTCCache
import KVTCCodec
import KVTCNumerics

/// Figures of one `kvtc bench codec` run.
struct CodecBenchResult: Codable {
    var source: String
    var tokens: Int
    var geometry: KVGeometry
    var ratio: Double
    var input_bytes: Int
    var blob_bytes: Int
    var compressed_tokens_ratio: Double
    var whole_cache_ratio: Double
    var key_components: Int
    var value_components: Int
    var calibrate_seconds: Double?
    var calibration_rows: Int?
    var compress_seconds: Double
    var decompress_seconds: Double
    var compress_gemm_seconds: Double
    var decompress_gemm_seconds: Double
    var gemm_gflops: Double
    var compress_mb_per_second: Double
    var decompress_mb_per_second: Double
    var compress_over_gemm: Double
    var decompress_over_gemm: Double
    var relative_error_keys: Double
    var relative_error_values: Double
    var threads: Int
}

struct BenchCodecCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "codec",
        abstract: "Time compression and decompression against the projection GEMMs alone.",
        discussion: """
        Without --profile and --cache, calibrates on synthetic caches of the embedded model's \
        geometry (30 layers x 3 kv heads x 64) with a decaying spectrum, then times a synthetic \
        cache. With them, times a real cache.
        """)

    @Option(help: "Tokens in the synthetic cache.") var tokens: Int = 8192
    @Option(help: "Nominal ratio.") var ratio: Double = 16
    @Option(help: "Calibration rows for the synthetic profile.") var calibrationRows: Int = 16384
    @Option(help: "Use this profile instead of calibrating a synthetic one.") var profile: String?
    @Option(help: "Use this cache file (needs --profile).") var cache: String?
    @Option(help: "DEFLATE level.") var level: Int = KVTCCompressor.defaultDeflateLevel
    @Option(help: "Timed repetitions (best is reported).") var repeats: Int = 3
    @Option(help: "Write the figures as JSON to this file.") var json: String?
    @Flag(help: "Also measure alternative code layouts and DEFLATE levels.") var layouts = false

    func validate() throws {
        if cache != nil && profile == nil { throw ValidationError("--cache needs --profile") }
        guard tokens > 200, repeats >= 1, calibrationRows >= 256 else { throw ValidationError("--tokens > 200, --repeats >= 1, --calibration-rows >= 256") }
    }

    func run() async throws {
        let progress = Progress.shared
        let geometry = KVGeometry(layers: 30, kvHeads: 3, headDim: 64)
        let rope = RoPE(layout: .interleaved, theta: 100_000, rotaryDims: 64)
        var calibrateSeconds: Double?
        let prof: Profile
        let input: KVCache
        var source = "synthetic"
        if let path = profile {
            prof = try loadProfile(path)
            if let c = cache {
                input = try loadCache(c)
                source = c
            } else {
                input = SyntheticCaches.cache(geometry: prof.geometry, rope: prof.rope, tokens: tokens, seed: 2)
            }
        } else {
            progress.status("generating \(calibrationRows) synthetic calibration rows")
            let calib = SyntheticCaches.cache(geometry: geometry, rope: rope, tokens: calibrationRows + 4, seed: 1)
            var options = CalibrationOptions()
            options.ratios = [ratio]
            let sw = Stopwatch()
            prof = try Calibrator.calibrate(caches: [calib], options: options,
                                            provenance: Provenance(rows: 0, sources: [], model: "synthetic"),
                                            progress: { progress.status("calibrating: \($0)") })
            calibrateSeconds = sw.elapsed
            progress.status("generating a \(tokens)-token synthetic cache")
            input = SyntheticCaches.cache(geometry: geometry, rope: rope, tokens: tokens, seed: 2)
        }
        let compressor = try KVTCCompressor(profile: prof, ratio: ratio, deflateLevel: level)
        var best = (c: Double.infinity, d: Double.infinity)
        var blob: CompressedCache!
        var restored: KVCache!
        for i in 0..<repeats {
            progress.status("timing compress/decompress (\(i + 1)/\(repeats))")
            let (b, tc) = try Stopwatch.time { try compressor.compress(input) }
            let (r, td) = try Stopwatch.time { try compressor.decompress(b.bytes) }
            best = (min(best.c, tc), min(best.d, td))
            blob = b
            restored = r
        }
        progress.status("timing the projection GEMMs alone")
        let n = blob.report.compressedTokens
        let p = prof.geometry.featuresPerToken
        let rk = compressor.plan.keys.componentsUsed, rv = compressor.plan.values.componentsUsed
        let gemm = GemmTimer.projectionTimes(tokens: n, features: p, keyRank: rk, valueRank: rv, repeats: repeats)
        progress.done()
        let inputBytes = input.fp16Bytes
        let result = CodecBenchResult(
            source: source, tokens: input.tokenCount, geometry: prof.geometry, ratio: ratio, input_bytes: inputBytes,
            blob_bytes: blob.bytes.count, compressed_tokens_ratio: blob.report.ratio, whole_cache_ratio: blob.report.wholeCacheRatio,
            key_components: rk, value_components: rv, calibrate_seconds: calibrateSeconds,
            calibration_rows: calibrateSeconds == nil ? nil : calibrationRows,
            compress_seconds: best.c, decompress_seconds: best.d,
            compress_gemm_seconds: gemm.compress, decompress_gemm_seconds: gemm.decompress, gemm_gflops: gemm.gflops,
            compress_mb_per_second: Double(inputBytes) / best.c / 1e6, decompress_mb_per_second: Double(inputBytes) / best.d / 1e6,
            compress_over_gemm: best.c / gemm.compress, decompress_over_gemm: best.d / gemm.decompress,
            relative_error_keys: relativeError(restored.keys, input.keys), relative_error_values: relativeError(restored.values, input.values),
            threads: BLAS.threadCount)
        print("kvtc bench codec: \(result.source) cache, \(result.tokens) tokens, \(result.geometry), \(Int(ratio))x nominal")
        if let c = calibrateSeconds { print(String(format: "calibration      %.1f s for %d rows x %d features", c, calibrationRows, p)) }
        print("stage          seconds    MB/s fp16   GEMM-only s   ratio to GEMM")
        print(String(format: "compress      %8.3f   %9.0f   %11.3f   %13.2f", best.c, result.compress_mb_per_second, gemm.compress, result.compress_over_gemm))
        print(String(format: "decompress    %8.3f   %9.0f   %11.3f   %13.2f", best.d, result.decompress_mb_per_second, gemm.decompress, result.decompress_over_gemm))
        print(String(format: "GEMM rate     %.1f GFLOP/s (sgemm, %d threads); components kept: keys %d, values %d", gemm.gflops, result.threads, rk, rv))
        print(String(format: "ratio         %.2fx over compressed tokens, %.2fx whole cache (%@ -> %@)", result.compressed_tokens_ratio,
                     result.whole_cache_ratio, formatBytes(inputBytes), formatBytes(result.blob_bytes)))
        print(String(format: "rel. error    keys %.4f, values %.4f", result.relative_error_keys, result.relative_error_values))
        if layouts {
            let rows = try LayoutStudy.run(blob: blob.bytes, compressor: compressor)
            let fp16 = blob.report.compressedTokensFP16Bytes
            print("\nlayout before DEFLATE                                  level      bytes    ratio   seconds")
            for r in rows {
                print(r.layout.padding(toLength: 54, withPad: " ", startingAt: 0)
                      + String(format: " %5d %10d %7.2fx %9.3f", r.level, r.bytes, Double(fp16) / Double(r.bytes), r.seconds))
            }
        }
        if let json {
            try writeFile(json, Array(jsonString(result).utf8))
        }
    }

    private func relativeError(_ a: [Float], _ b: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for i in a.indices { let d = Double(a[i] - b[i]); num += d * d; den += Double(b[i]) * Double(b[i]) }
        return (num / max(den, 1e-30)).squareRoot()
    }
}

/// Times the projection GEMMs of compression and decompression on their own.
enum GemmTimer {
    static func projectionTimes(tokens n: Int, features p: Int, keyRank rk: Int, valueRank rv: Int, repeats: Int)
        -> (compress: Double, decompress: Double, gflops: Double)
    {
        let x = [Float](repeating: 0.5, count: n * p)
        var y = [Float](repeating: 0, count: n * max(rk, rv))
        let basis = [Float](repeating: 0.01, count: max(rk, rv) * p)
        var out = [Float](repeating: 0, count: n * p)
        var bestC = Double.infinity, bestD = Double.infinity
        for _ in 0..<repeats {
            let sc = Stopwatch()
            for r in [rk, rv] {
                x.withUnsafeBufferPointer { a in basis.withUnsafeBufferPointer { b in y.withUnsafeMutableBufferPointer { c in
                    BLAS.gemm(.normal, .transposed, m: n, n: r, k: p, a: a.baseAddress!, lda: p, b: b.baseAddress!, ldb: p, c: c.baseAddress!, ldc: r)
                } } }
            }
            bestC = min(bestC, sc.elapsed)
            let sd = Stopwatch()
            for r in [rk, rv] {
                y.withUnsafeBufferPointer { a in basis.withUnsafeBufferPointer { b in out.withUnsafeMutableBufferPointer { c in
                    BLAS.gemm(m: n, n: p, k: r, a: a.baseAddress!, lda: r, b: b.baseAddress!, ldb: p, c: c.baseAddress!, ldc: p)
                } } }
            }
            bestD = min(bestD, sd.elapsed)
        }
        let flops = 2.0 * Double(n) * Double(p) * Double(rk + rv)
        return (bestC, bestD, 2 * flops / (bestC + bestD) / 1e9)
    }
}

/// Synthetic caches with a decaying spectrum, for benchmarks without a model.
enum SyntheticCaches {
    /// Rows `Z * diag(sigma) * M + bias` with `sigma_j = (1 + j)^-0.75` and Gaussian `M`,
    /// keys rotated by RoPE, rounded to fp16.
    static func cache(geometry: KVGeometry, rope: RoPE, tokens: Int, seed: UInt64) -> KVCache {
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
            let box = UnsafeSendableBuffer(buf)
            Parallel.forEachRange(count / 2, minimumPerTask: 1 << 16) { range in
                var state = seed &+ UInt64(range.lowerBound) &* 0x9E37_79B9_7F4A_7C15
                func next() -> Float {
                    state &+= 0x9E37_79B9_7F4A_7C15
                    var z = state
                    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                    z ^= z >> 31
                    return (Float(z >> 40) + 0.5) / Float(1 << 24)
                }
                for i in range {
                    let u = next(), v = next()
                    let r = (-2 * log(u)).squareRoot() * scale
                    box.buffer[2 * i] = r * cos(2 * .pi * v)
                    box.buffer[2 * i + 1] = r * sin(2 * .pi * v)
                }
            }
        }
        return out
    }
}

struct UnsafeSendableBuffer: @unchecked Sendable {
    let buffer: UnsafeMutableBufferPointer<Float>
    init(_ b: UnsafeMutableBufferPointer<Float>) { buffer = b }
}
