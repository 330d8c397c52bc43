import KVTCCache
import KVTCNumerics

/// Random caches shaped like real ones, for tests: per token a few latent factors (with a
/// decaying spectrum) mixed into every feature, plus noise; keys are built un-rotated and
/// then rotated by RoPE at their positions, as a model stores them.
///
/// The mixing matrices come from ``mixingSeed`` and are shared by every cache a builder
/// makes; the factors and noise come from each cache's own seed.
public struct SyntheticCacheBuilder: Sendable {
    public var geometry: KVGeometry
    public var rope: RoPE
    /// Latent factors per token; factor `f` has standard deviation `1 / (f + 1)`.
    public var factors: Int
    /// Seed of the mixing matrices (and of the key bias).
    public var mixingSeed: UInt64
    /// Standard deviation of a per-feature bias added to every key (0: none).
    public var keyBias: Float
    /// Standard deviation of the noise added to every key and value.
    public var noise: Float
    /// Values use factor `(f + valueFactorShift) mod factors` where keys use factor `f`.
    public var valueFactorShift: Int
    /// Whether keys and values are rounded to fp16, as a model's cache is stored.
    public var roundsToFP16: Bool
    /// Every layer's rotation and window, for a hybrid model's cache (`nil`: every layer
    /// uses ``rope``).
    public var layerAttention: [LayerAttention]?

    public init(geometry: KVGeometry, rope: RoPE, factors: Int, mixingSeed: UInt64, keyBias: Float = 0,
                noise: Float, valueFactorShift: Int, roundsToFP16: Bool) {
        self.geometry = geometry
        self.rope = rope
        self.factors = factors
        self.mixingSeed = mixingSeed
        self.keyBias = keyBias
        self.noise = noise
        self.valueFactorShift = valueFactorShift
        self.roundsToFP16 = roundsToFP16
    }

    /// A cache of `tokens` tokens at positions `firstPosition...`, drawn from `seed`.
    public func cache(tokens: Int, seed: UInt64, firstPosition: Int = 0, model: String = "synthetic") -> KVCache {
        var rng = SplitMix64(seed: mixingSeed)
        let p = geometry.featuresPerToken
        let mixK = (0..<(factors * p)).map { _ in rng.gaussian() }
        let mixV = (0..<(factors * p)).map { _ in rng.gaussian() }
        let biasK = keyBias == 0 ? [Float](repeating: 0, count: p) : (0..<p).map { _ in rng.gaussian() * keyBias }
        var data = SplitMix64(seed: seed)
        var keys = [Float](repeating: 0, count: tokens * p)
        var values = keys
        for t in 0..<tokens {
            let z = (0..<factors).map { f in data.gaussian() / Float(f + 1) }
            for i in 0..<p {
                var k = biasK[i], v: Float = 0
                for f in 0..<factors { k += z[f] * mixK[f * p + i]; v += z[(f + valueFactorShift) % factors] * mixV[f * p + i] }
                keys[t * p + i] = k + noise * data.gaussian()
                values[t * p + i] = v + noise * data.gaussian()
            }
        }
        let positions = (0..<tokens).map { firstPosition + $0 }
        let rotation = KeyRotation(geometry: geometry, layers: layerAttention ?? LayerAttention.uniform(rope, layers: geometry.layers))
        keys.withUnsafeMutableBufferPointer {
            rotation.rotate(rows: $0.baseAddress!, stride: p, columns: 0..<p, positions: positions, inverse: false)
        }
        if roundsToFP16 {
            keys = keys.map { Float(Float16($0)) }
            values = values.map { Float(Float16($0)) }
        }
        return try! KVCache(geometry: geometry, rope: rope, layerAttention: layerAttention, positions: positions, keys: keys,
                            values: values, model: model)
    }
}
