import Foundation
import KVTCCalibration
import KVTCCodec
import KVTCEmbeddedModel
import KVTCModels
import KVTCTestSupport
import Testing

@Suite(.serialized) struct LayerSensitivityTests {
    static func window(_ m: any LanguageModel) -> LayerSensitivity.Window {
        let text = try! String(contentsOfFile: "/usr/share/common-licenses/GPL-3", encoding: .utf8)
        let ids = m.tokenizer.encode(text)
        return .init(context: [1] + ids[0..<159], continuation: Array(ids[159..<192]))
    }

    /// Spearman rank correlation.
    static func rankCorrelation(_ a: [Double], _ b: [Double]) -> Double {
        func ranks(_ x: [Double]) -> [Double] {
            var r = [Double](repeating: 0, count: x.count)
            for (rank, i) in x.indices.sorted(by: { x[$0] < x[$1] }).enumerated() { r[i] = Double(rank) }
            return r
        }
        let ra = ranks(a), rb = ranks(b), n = Double(a.count)
        let d2 = zip(ra, rb).reduce(0.0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
        return 1 - 6 * d2 / (n * (n * n - 1))
    }

    /// For errors this small KL is quadratic in them, so KL per unit of noise variance is a
    /// property of the layer, not of the noise: another draw at half the noise must order the
    /// layers alike (one 32-token estimate scatters by a few times per layer, while layers
    /// differ by orders of magnitude).
    @Test func weightsArePropertiesOfTheLayersNotOfTheNoise() async throws {
        try await onOwnThread {
            let m = try EmbeddedModel.get()
            let protection = Protection(sinkTokens: 4, recentTokens: 16)
            let window = Self.window(m)
            let a = try LayerSensitivity.measure(model: m, windows: [window], protection: protection, relativeNoise: 0.1, seed: 1)
            let b = try LayerSensitivity.measure(model: m, windows: [window], protection: protection, relativeNoise: 0.05, seed: 2)
            #expect(a.keys.count == 30 && a.values.count == 30)
            #expect((a.keys + a.values + b.keys + b.values).allSatisfy { $0 > 0 && $0.isFinite })
            let rk = Self.rankCorrelation(a.keys, b.keys), rv = Self.rankCorrelation(a.values, b.values)
            print("layer sensitivity rank correlation between draws: keys \(rk), values \(rv)")
            #expect(rk > 0.6 && rv > 0.6, "keys \(rk), values \(rv)")
            let spread = (a.keys.max()! / a.keys.min()!, a.values.max()! / a.values.min()!)
            #expect(spread.0 > 10 && spread.1 > 10, "\(spread)")
            // Feature weights: the layer's weight spread by the within-layer shape, mean kept.
            let f = m.geometry.featuresPerLayer
            let even = a.featureWeights(geometry: m.geometry)
            #expect(even.keys.count == m.geometry.featuresPerToken && even.keys[5 * f] == Float(a.keys[5]) && even.keys[5 * f + f - 1] == Float(a.keys[5]))
            var shape = CacheSensitivity(keys: [Float](repeating: 1, count: f * 30), values: [Float](repeating: 1, count: f * 30))
            for i in 0..<(f / 2) { shape.keys[5 * f + i] = 3 }
            let shaped = a.featureWeights(geometry: m.geometry, within: shape)
            let layer5 = Array(shaped.keys[(5 * f)..<(6 * f)])
            #expect(abs(layer5.reduce(0, +) / Float(f) - Float(a.keys[5])) <= 1e-4 * Float(a.keys[5]))
            #expect(abs(layer5[0] / layer5[f - 1] - 3) < 1e-4)
        }
    }
}
