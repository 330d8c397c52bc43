import KVTCCache
import KVTCTestSupport
import Foundation
@testable import KVTCCodec

enum Fixtures {
    static let geometry = KVGeometry(layers: 4, kvHeads: 2, headDim: 16)
    static let rope = RoPE(layout: .interleaved, theta: 10000, rotaryDims: 16)

    /// A cache whose un-rotated keys and values are low-rank plus noise, like real caches:
    /// a few latent factors per token mixed into all features, decaying spectrum.
    static func cache(tokens: Int, seed: UInt64, geometry: KVGeometry = geometry, rope: RoPE = rope,
                      firstPosition: Int = 0) -> KVCache {
        var rng = SplitMix(seed: 1234) // mixing matrices are shared by every cache
        let p = geometry.featuresPerToken
        let factors = 12
        let mixK = (0..<(factors * p)).map { _ in rng.gaussian() }
        let mixV = (0..<(factors * p)).map { _ in rng.gaussian() }
        let biasK = (0..<p).map { _ in rng.gaussian() * 2 }
        var data = SplitMix(seed: seed)
        var keys = [Float](repeating: 0, count: tokens * p)
        var values = keys
        for t in 0..<tokens {
            let z = (0..<factors).map { f in data.gaussian() / Float(f + 1) }
            for i in 0..<p {
                var k = biasK[i], v: Float = 0
                for f in 0..<factors { k += z[f] * mixK[f * p + i]; v += z[(f + 3) % factors] * mixV[f * p + i] }
                keys[t * p + i] = k + 0.02 * data.gaussian()
                values[t * p + i] = v + 0.02 * data.gaussian()
            }
        }
        let positions = (0..<tokens).map { firstPosition + $0 }
        keys.withUnsafeMutableBufferPointer {
            rope.rotate(rows: $0.baseAddress!, rowLength: p, positions: positions, headDim: geometry.headDim, inverse: false)
        }
        // Round to fp16 as a model's cache would be stored.
        keys = keys.map { Float(Float16($0)) }
        values = values.map { Float(Float16($0)) }
        return try! KVCache(geometry: geometry, rope: rope, positions: positions, keys: keys, values: values, model: "synthetic")
    }

    static func profile(ratios: [Double] = [4, 8, 16], equalize: Bool = false) -> Profile {
        let caches = (0..<4).map { cache(tokens: 400, seed: UInt64(100 + $0)) }
        var options = CalibrationOptions()
        options.ratios = ratios
        options.equalizeLayerVariance = equalize
        return try! Calibrator.calibrate(caches: caches, options: options,
                                         provenance: Provenance(rows: 0, sources: [], model: "synthetic"))
    }

    static func relativeError(_ a: [Float], _ b: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for i in a.indices { let d = Double(a[i] - b[i]); num += d * d; den += Double(b[i]) * Double(b[i]) }
        return (num / max(den, 1e-30)).squareRoot()
    }
}
