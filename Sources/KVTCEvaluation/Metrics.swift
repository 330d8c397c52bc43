import Foundation
import KVTCCache

/// Comparison of two next-token distributions over a continuation.
public struct DistributionMetrics: Sendable, Equatable {
    /// Mean KL(reference || candidate) in nats.
    public var meanKL: Double
    /// Fraction of positions where the arg-max tokens agree.
    public var top1: Double
    /// Mean negative log-likelihood of the actual next tokens under each distribution.
    public var nllReference: Double
    public var nllCandidate: Double
    public var positions: Int
}

/// Log-softmax of one row of logits, in double precision.
func logSoftmax(_ logits: UnsafeBufferPointer<Float>) -> [Double] {
    var m = -Double.infinity
    for v in logits { m = max(m, Double(v)) }
    var s = 0.0
    for v in logits { s += exp(Double(v) - m) }
    let lse = m + log(s)
    return logits.map { Double($0) - lse }
}

/// Compares logits row by row: `reference` and `candidate` are `rows x vocab`; `targets[i]`
/// is the actual token after row `i`.
public func compareDistributions(reference: [Float], candidate: [Float], vocabulary v: Int, targets: [Int]) -> DistributionMetrics {
    let rows = targets.count
    precondition(reference.count == rows * v && candidate.count == rows * v)
    var kl = 0.0, agree = 0, nllR = 0.0, nllC = 0.0
    reference.withUnsafeBufferPointer { r in
        candidate.withUnsafeBufferPointer { c in
            for i in 0..<rows {
                let lr = logSoftmax(UnsafeBufferPointer(rebasing: r[(i * v)..<((i + 1) * v)]))
                let lc = logSoftmax(UnsafeBufferPointer(rebasing: c[(i * v)..<((i + 1) * v)]))
                var k = 0.0
                var ar = 0, ac = 0
                for j in 0..<v {
                    let pr = exp(lr[j])
                    if pr > 0 { k += pr * (lr[j] - lc[j]) }
                    if lr[j] > lr[ar] { ar = j }
                    if lc[j] > lc[ac] { ac = j }
                }
                kl += max(0, k)
                if ar == ac { agree += 1 }
                nllR -= lr[targets[i]]
                nllC -= lc[targets[i]]
            }
        }
    }
    let n = Double(max(rows, 1))
    return DistributionMetrics(meanKL: kl / n, top1: Double(agree) / n, nllReference: nllR / n, nllCandidate: nllC / n, positions: rows)
}

/// Relative Frobenius error of the decoded keys and values against the exact cache, over
/// the exact cache's tokens; tokens missing from the decoded cache (eviction) count as
/// zeros.
public func relativeErrors(exact: KVCache, decoded: KVCache) -> (keys: Double, values: Double) {
    let p = exact.geometry.featuresPerToken
    var index: [Int: Int] = [:]
    for (i, pos) in decoded.positions.enumerated() { index[pos] = i }
    var nk = 0.0, dk = 0.0, nv = 0.0, dv = 0.0
    for t in 0..<exact.tokenCount {
        let j = index[exact.positions[t]]
        for i in 0..<p {
            let ek = Double(exact.keys[t * p + i]), ev = Double(exact.values[t * p + i])
            let ck = j.map { Double(decoded.keys[$0 * p + i]) } ?? 0
            let cv = j.map { Double(decoded.values[$0 * p + i]) } ?? 0
            nk += (ek - ck) * (ek - ck); dk += ek * ek
            nv += (ev - cv) * (ev - cv); dv += ev * ev
        }
    }
    return ((nk / max(dk, 1e-30)).squareRoot(), (nv / max(dv, 1e-30)).squareRoot())
}
