import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
import KVTCCache
import KVTCCodec
@testable import KVTCEvaluation
@testable import KVTCModels

/// A small cache with smooth, bounded values (exactly representable in fp16 up to rounding).
func smallCache(tokens: Int = 300, layers: Int = 2, heads: Int = 2, dim: Int = 8, firstPosition: Int = 0) -> KVCache {
    let g = KVGeometry(layers: layers, kvHeads: heads, headDim: dim)
    let p = g.featuresPerToken
    var k = [Float](repeating: 0, count: tokens * p), v = k
    for t in 0..<tokens {
        for i in 0..<p {
            k[t * p + i] = Float(Float16(sin(Float(t) * 0.37 + Float(i)) * 3 + Float(i % 5)))
            v[t * p + i] = Float(Float16(cos(Float(t) * 0.11 * Float(i % 3 + 1)) - 0.5))
        }
    }
    return try! KVCache(geometry: g, rope: RoPE(layout: .interleaved, theta: 10000, rotaryDims: dim),
                        positions: Array(firstPosition..<(firstPosition + tokens)), keys: k, values: v, model: "test")
}

/// Wraps an existential codec (opens it into the generic wrapper).
func protected(_ codec: any MiddleCodec) -> any CacheCompressor {
    func wrap<C: MiddleCodec>(_ c: C) -> any CacheCompressor { ProtectedCompressor(c) }
    return wrap(codec)
}

@Suite struct BaselineTests {
    /// Bytes each method must store for `n` middle tokens, from its definition.
    static func expectedPayload(_ codec: any MiddleCodec, n: Int, geometry g: KVGeometry) -> Int {
        let p = g.featuresPerToken
        switch codec {
        case is FP8Codec: return 2 * (n * p + 4 * g.layers)
        case let c as PerTokenIntCodec: return 2 * (n * p / g.headDim) * (4 + g.headDim * c.bits / 8)
        case let c as KIVICodec:
            let full = n / 32 * 32
            let keyGroups = full / 32 * p, valueGroups = full * ((p + 31) / 32)
            return (keyGroups * (4 + 32 * c.bits / 8)) + valueGroups * (4 + min(32, p) * c.bits / 8) + 2 * 2 * (n - full) * p
        default: return -1
        }
    }

    @Test func byteAccountingMatchesEachMethodsDefinition() throws {
        let cache = smallCache()
        let n = 300 - 4 - 128
        let codecs: [any MiddleCodec] = [FP8Codec(), PerTokenIntCodec(bits: 8), PerTokenIntCodec(bits: 4), KIVICodec(bits: 2), KIVICodec(bits: 4)]
        for codec in codecs {
            let payload = try codec.encode(middle: try cache.tokens(4..<(4 + n)), context: cache)
            #expect(payload.count == Self.expectedPayload(codec, n: n, geometry: cache.geometry), "\(codec.method)")
            let blob = try protected(codec).compress(cache)
            #expect(blob.report.totalBytes == blob.bytes.count)
            #expect(blob.report.compressedTokens == n)
            // Everything except the exact tokens is charged to the compressed tokens.
            #expect(blob.report.compressedTokensBytes == blob.bytes.count - 132 * cache.geometry.featuresPerToken * 4)
            #expect(blob.report.compressedTokensBytes > payload.count)
        }
    }

    @Test func roundTripsAreCloseAndKeepProtectedTokensExact() throws {
        let cache = smallCache()
        let p = cache.geometry.featuresPerToken
        let tolerances: [(any MiddleCodec, Double)] = [(FP8Codec(), 0.07), (PerTokenIntCodec(bits: 8), 0.01), (PerTokenIntCodec(bits: 4), 0.1),
                                                       (KIVICodec(bits: 4), 0.1), (KIVICodec(bits: 2), 0.5)]
        for (codec, tol) in tolerances {
            let c = protected(codec)
            let back = try c.decompress(c.compress(cache).bytes)
            #expect(back.positions == cache.positions)
            #expect(Array(back.keys[0..<(4 * p)]) == Array(cache.keys[0..<(4 * p)]))
            #expect(Array(back.values.suffix(128 * p)) == Array(cache.values.suffix(128 * p)))
            let e = relativeErrors(exact: cache, decoded: back)
            #expect(e.keys < tol && e.values < tol, "\(codec.method): \(e)")
        }
    }

    @Test func fp8EncodesTheE4M3Grid() {
        #expect(FP8Codec.decode(FP8Codec.encode(448)) == 448)
        #expect(FP8Codec.decode(FP8Codec.encode(1000)) == 448)
        #expect(FP8Codec.decode(FP8Codec.encode(-1.0625)) == -1.0)  // tie between 1.0 and 1.125 goes to the even code
        #expect(FP8Codec.decode(FP8Codec.encode(0.001953125)) == 0.001953125)  // smallest subnormal 2^-9
        #expect(FP8Codec.magnitudes.count == 127)
    }

    @Test func evictionKeepsTheBudgetedTokensExactly() throws {
        let cache = smallCache(tokens: 400)
        let c = ProtectedCompressor(EvictionCodec(ratio: 8, selection: .strided))
        let blob = try c.compress(cache)
        let back = try c.decompress(blob.bytes)
        let n = 400 - 132
        let kept = back.tokenCount - 132
        #expect(kept == Int(Double(n) * Double(4 * 32) / 8 / Double(4 * 32 + 4)))
        #expect(blob.report.ratio >= 7.5 && blob.report.ratio <= 8.5, "ratio \(blob.report.ratio)")
        // Kept tokens are bit-exact fp16 and keep their positions.
        let p = cache.geometry.featuresPerToken
        for (j, pos) in back.positions.enumerated() {
            #expect(Array(back.keys[(j * p)..<((j + 1) * p)]) == Array(cache.keys[(pos * p)..<((pos + 1) * p)]))
        }
        // Scored eviction keeps the highest scores.
        let scored = ProtectedCompressor(EvictionCodec(ratio: 8, selection: .scored(name: "t", scores: { c in (0..<c.tokenCount).map { Float($0 % 10) } })))
        let s = try scored.decompress(scored.compress(cache).bytes)
        #expect(s.positions.dropFirst(4).dropLast(128).allSatisfy { $0 % 10 >= 8 })
    }

    @Test func corruptBaselineBlobsAreRejected() throws {
        let c = ProtectedCompressor(KIVICodec(bits: 2))
        var bytes = try c.compress(smallCache()).bytes
        bytes[bytes.count / 2] ^= 0x10
        #expect(throws: BaselineError.self) { try c.decompress(bytes) }
        #expect(throws: BaselineError.self) { try c.decompress(Array(bytes.prefix(20))) }
        #expect(throws: BaselineError.self) { try ProtectedCompressor(FP8Codec()).decompress(try c.compress(smallCache()).bytes) }
    }
}

@Suite struct MetricsTests {
    @Test func klAndTop1OnKnownDistributions() {
        // Two rows over a vocabulary of 3.
        let ref: [Float] = [0, 0, 0, 2, 0, 0]
        let cand: [Float] = [0, 0, 0, 0, 2, 0]
        let m = compareDistributions(reference: ref, candidate: cand, vocabulary: 3, targets: [0, 0])
        // Row 0: identical -> KL 0, agree. Row 1: p = softmax(2,0,0), q = softmax(0,2,0).
        let z = exp(2.0) + 2
        let p = [exp(2.0) / z, 1 / z, 1 / z], q = [1 / z, exp(2.0) / z, 1 / z]
        let kl1 = (0..<3).reduce(0.0) { $0 + p[$1] * log(p[$1] / q[$1]) }
        #expect(abs(m.meanKL - kl1 / 2) < 1e-9)
        #expect(m.top1 == 0.5)
        #expect(abs(m.nllReference - (log(3.0) + (-log(p[0]))) / 2) < 1e-9)
        #expect(abs(m.nllCandidate - (log(3.0) + (-log(q[0]))) / 2) < 1e-9)
    }

    @Test func relativeErrorCountsEvictedTokensAsMissing() throws {
        let cache = smallCache(tokens: 10)
        let e0 = relativeErrors(exact: cache, decoded: cache)
        #expect(e0.keys == 0 && e0.values == 0)
        let none = try cache.tokens(0..<0)
        let e1 = relativeErrors(exact: cache, decoded: none)
        #expect(abs(e1.keys - 1) < 1e-12 && abs(e1.values - 1) < 1e-12)
    }

    @Test func svgPlotIsWellFormed() throws {
        let r = MethodResult(method: "kvtc", setting: "16x", nominal_ratio: 16, effective_ratio: 20, ratio_before_entropy: 16,
                             whole_cache_ratio: 8, mean_kl: 0.01, top1: 0.95, ppl_exact: 10, ppl_decoded: 10.1,
                             rel_err_keys: 0.1, rel_err_values: 0.2, windows: 1, compress_seconds: 0, decompress_seconds: 0)
        var r2 = r
        r2.method = "kivi2"; r2.effective_ratio = 6; r2.mean_kl = 0.2
        var drop = r
        drop.method = "drop-middle"; drop.effective_ratio = 60000; drop.mean_kl = 0.5
        let svg = EvaluationReport.svg([r, r2, drop], title: "t")
        // A method that stores nothing is a reference line, not a point far off the axis.
        #expect(svg.contains("stroke-dasharray") && svg.contains("drop-middle: middle dropped"))
        let doc = try XMLDocument(xmlString: svg)
        #expect(doc.rootElement()?.name == "svg")
        #expect(svg.contains("kivi2") && svg.contains("polyline") == false)
        let json = EvaluationReport.json([r])
        let obj = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let results = obj?["results"] as? [[String: Any]]
        #expect(results?.first?["mean_kl"] as? Double == 0.01)
        #expect(results?.first?["effective_ratio"] as? Double == 20)
    }
}
