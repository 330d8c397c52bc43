import Foundation

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
