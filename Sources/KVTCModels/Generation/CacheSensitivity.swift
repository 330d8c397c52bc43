import KVTCCache

/// How much an error in each feature of a cached key or value row perturbs the model, to
/// first order and per feature (the diagonal of the error's quadratic form).
///
/// - A key error `dk` of kv head `h` moves the attention logit of each query head `g` that
///   reads it by `q_g . dk`, whose expected square is `sum_i E[q_g,i^2] dk_i^2` when query
///   features are uncorrelated. RoPE rotates each pair of features by the distance between
///   query and key, so the weight of a feature is the mean of its pair's (the same for
///   both, whatever the distance).
/// - A value error `dv` reaches the residual stream through the output projection's columns
///   of each query head that reads it: weight `sum_g |W_o[:, g, i]|^2`.
///
/// Scaling cached features by the square roots of these weights before the PCA makes its
/// squared error, which the bit allocator minimises, track the error the model feels.
public struct CacheSensitivity: Sendable, Equatable {
    /// One weight per key feature (`layers * kvHeads * headDim`, cache row order).
    public var keys: [Float]
    /// One weight per value feature.
    public var values: [Float]

    public init(keys: [Float], values: [Float]) {
        self.keys = keys
        self.values = values
    }
}

extension LanguageModel {
    /// The sensitivity of this model's cache given the mean square of every query feature
    /// per layer (``AttentionObserver/queryMeanSquares`` after a run over representative text).
    public func cacheSensitivity(queryMeanSquares q: [[Double]]) -> CacheSensitivity {
        let d = dimensions
        let hd = d.headDim, group = d.heads / d.kvHeads
        let energy = attentionOutputEnergy
        let p = geometry.featuresPerToken, f = geometry.featuresPerLayer
        var keys = [Float](repeating: 0, count: p), values = keys
        for l in 0..<d.layers {
            let rope = layerAttention[l].rope
            for h in 0..<d.kvHeads {
                for i in 0..<hd {
                    let partner = rope.partner(of: i)
                    var k = 0.0, v: Float = 0
                    for g in (h * group)..<((h + 1) * group) {
                        k += (q[l][g * hd + i] + q[l][g * hd + partner]) / 2
                        v += energy[l][g * hd + i]
                    }
                    keys[l * f + h * hd + i] = Float(k)
                    values[l * f + h * hd + i] = v
                }
            }
        }
        return CacheSensitivity(keys: keys, values: values)
    }
}

extension RoPE {
    /// The feature of a head rotated together with feature `i` (itself when unrotated).
    func partner(of i: Int) -> Int {
        guard i < rotaryDims else { return i }
        switch layout {
        case .interleaved: return i ^ 1
        case .half: let half = rotaryDims / 2; return i < half ? i + half : i - half
        case .none: return i
        }
    }
}
