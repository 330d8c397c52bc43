import Foundation
import KVTCCache

/// Relative Frobenius error of the decoded keys and values against the exact cache, over
/// the rows of the exact cache a query after it can read (every row, except a sliding
/// layer's rows its window has passed); tokens missing from the decoded cache (eviction)
/// count as zeros.
public func relativeErrors(exact: KVCache, decoded: KVCache) -> (keys: Double, values: Double) {
    let p = exact.geometry.featuresPerToken, f = exact.geometry.featuresPerLayer
    var index: [Int: Int] = [:]
    for (i, pos) in decoded.positions.enumerated() { index[pos] = i }
    // A sliding layer's rows before its reach are never read again (a window-trimming
    // codec drops them): they are not counted.
    let reach = exact.laterQueryReach
    var nk = 0.0, dk = 0.0, nv = 0.0, dv = 0.0
    for t in 0..<exact.tokenCount {
        let j = index[exact.positions[t]]
        for i in 0..<p where exact.positions[t] >= reach[i / f] {
            let ek = Double(exact.keys[t * p + i]), ev = Double(exact.values[t * p + i])
            let ck = j.map { Double(decoded.keys[$0 * p + i]) } ?? 0
            let cv = j.map { Double(decoded.values[$0 * p + i]) } ?? 0
            nk += (ek - ck) * (ek - ck); dk += ek * ek
            nv += (ev - cv) * (ev - cv); dv += ev * ev
        }
    }
    return ((nk / max(dk, 1e-30)).squareRoot(), (nv / max(dv, 1e-30)).squareRoot())
}
