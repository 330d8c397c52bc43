import Foundation
import KVTCCache

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
