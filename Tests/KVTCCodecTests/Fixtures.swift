import KVTCCache
import KVTCTestSupport
import Foundation
@testable import KVTCCodec

enum Fixtures {
    static let geometry = KVGeometry(layers: 4, kvHeads: 2, headDim: 16)
    static let rope = RoPE(layout: .interleaved, theta: 10000, rotaryDims: 16)

    /// A cache whose un-rotated keys and values are low-rank plus noise, like real caches:
    /// 12 latent factors per token mixed into all features (decaying spectrum), a key bias,
    /// rounded to fp16. The mixing matrices are shared by every cache.
    static func cache(tokens: Int, seed: UInt64, geometry: KVGeometry = geometry, rope: RoPE = rope,
                      firstPosition: Int = 0) -> KVCache {
        SyntheticCacheBuilder(geometry: geometry, rope: rope, factors: 12, mixingSeed: 1234, keyBias: 2, noise: 0.02,
                              valueFactorShift: 3, roundsToFP16: true)
            .cache(tokens: tokens, seed: seed, firstPosition: firstPosition)
    }

    static func profile(ratios: [Double] = [4, 8, 16], recipe: CalibrationRecipe = .standardWithoutModel) -> Profile {
        let caches = (0..<4).map { cache(tokens: 400, seed: UInt64(100 + $0)) }
        var options = CalibrationOptions()
        options.ratios = ratios
        options.recipe = recipe
        return try! Calibrator.calibrate(caches: caches, options: options,
                                         provenance: Provenance(rows: 0, sources: [], model: "synthetic"))
    }

    static func relativeError(_ a: [Float], _ b: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for i in a.indices { let d = Double(a[i] - b[i]); num += d * d; den += Double(b[i]) * Double(b[i]) }
        return (num / max(den, 1e-30)).squareRoot()
    }
}
