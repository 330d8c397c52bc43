import Foundation
import KVTCCache
import KVTCCodec
import KVTCModels
import KVTCNumerics

/// How far the model's next-token distributions move per unit of squared error in each
/// layer's cached keys and in its cached values, measured rather than assumed: noise of a
/// known variance is added to one layer of one stream of a real cache (the tokens a codec
/// would compress), a continuation is run teacher-forced, and the KL divergence from the
/// exact run is divided by the noise variance. For small errors KL is quadratic in them, so
/// this is the layer's weight in a squared-error objective that tracks KL.
public struct LayerSensitivity: Sendable, Equatable {
    /// Per layer: mean KL (nats per predicted token) per unit of squared error per key feature.
    public var keys: [Double]
    /// The same for values.
    public var values: [Double]

    /// One window of text: the context that is cached (BOS first) and the continuation fed on
    /// top of it.
    public struct Window: Sendable {
        public var context: [Int]
        public var continuation: [Int]
        public init(context: [Int], continuation: [Int]) {
            self.context = context
            self.continuation = continuation
        }
    }

    /// Measures the sensitivity of `model` on `windows`.
    ///
    /// - Parameters:
    ///   - protection: the tokens left exact (not perturbed), as the codec would.
    ///   - relativeNoise: noise standard deviation relative to the RMS of the perturbed
    ///     layer's features (0.1 is about the error of a 16x profile).
    public static func measure(model: any LanguageModel, windows: [Window], protection: Protection,
                               relativeNoise: Float = 0.1, seed: UInt64 = 1,
                               progress: (String) -> Void = { _ in }) throws -> LayerSensitivity {
        let g = model.geometry
        let f = g.featuresPerLayer, p = g.featuresPerToken
        var keys = [Double](repeating: 0, count: g.layers), values = keys
        var rng = SplitMix64(seed: seed)
        let vocabulary = model.dimensions.vocabularySize
        for (wi, w) in windows.enumerated() {
            var exact = model.makeCache(reservingCapacity: w.context.count + w.continuation.count)
            _ = try model.prefill(tokens: w.context, cache: &exact, logits: .none)
            var reference = exact
            let inputs = Array(w.continuation.dropLast())
            let referenceLogits = try model.prefill(tokens: inputs, cache: &reference, logits: .all).elements
            let (lead, trail) = protection.exactTokens(of: exact)
            let noisy = lead..<(exact.tokenCount - trail)
            guard !noisy.isEmpty else { continue }
            for isKeys in [true, false] {
                for l in 0..<g.layers {
                    progress("layer sensitivity: window \(wi + 1)/\(windows.count), \(isKeys ? "keys" : "values") of layer \(l + 1)/\(g.layers)")
                    var cache = exact
                    var variance: Float = 0
                    cache.withMutableStreams { k, v in
                        let stream = isKeys ? k : v
                        var ms = 0.0
                        for t in noisy { for i in 0..<f { let x = Double(stream[t * p + l * f + i]); ms += x * x } }
                        ms /= Double(noisy.count * f)
                        let sigma = relativeNoise * Float(ms.squareRoot())
                        variance = sigma * sigma
                        for t in noisy { for i in 0..<f { stream[t * p + l * f + i] += sigma * gaussian(&rng) } }
                    }
                    guard variance > 0 else { continue }
                    let logits = try model.prefill(tokens: inputs, cache: &cache, logits: .all).elements
                    let kl = compareDistributions(reference: referenceLogits, candidate: logits, vocabulary: vocabulary,
                                                  targets: Array(w.continuation.dropFirst())).meanKL
                    let weight = kl / Double(variance) / Double(windows.count)
                    if isKeys { keys[l] += weight } else { values[l] += weight }
                }
            }
        }
        return LayerSensitivity(keys: keys, values: values)
    }

    /// One weight per feature of the cache row: each layer's weight (floored at a thousandth
    /// of the stream's largest, so that no layer is scaled to nothing by a noisy estimate)
    /// spread over its features in proportion to `within` (e.g. the model's
    /// ``CacheSensitivity``; nil spreads it evenly).
    public func featureWeights(geometry g: KVGeometry, within: CacheSensitivity? = nil) -> (keys: [Float], values: [Float]) {
        let f = g.featuresPerLayer
        func expand(_ w: [Double], _ shape: [Float]?) -> [Float] {
            let floor = (w.max() ?? 0) * 1e-3
            var out = [Float](repeating: 0, count: w.count * f)
            for l in w.indices {
                let layer = shape.map { Array($0[(l * f)..<((l + 1) * f)]) } ?? [Float](repeating: 1, count: f)
                let mean = max(layer.reduce(0, +) / Float(f), .leastNormalMagnitude)
                for i in 0..<f { out[l * f + i] = Float(max(w[l], floor)) * layer[i] / mean }
            }
            return out
        }
        return (expand(keys, within?.keys), expand(values, within?.values))
    }

    /// A standard normal sample (Box-Muller).
    private static func gaussian(_ rng: inout SplitMix64) -> Float {
        let u1 = Double.random(in: Double.leastNonzeroMagnitude..<1, using: &rng)
        let u2 = Double.random(in: 0..<1, using: &rng)
        return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2))
    }
}
