import Foundation
import KVTCNumerics
import Testing
@testable import KVTCModels

/// The shared attention kernel against a direct computation, with and without a window.
@Suite struct AttentionTests {
    /// `softmax(scale q.k) v` over the keys query `t` may see, in double precision.
    func reference(q: [Float], k: [Float], v: [Float], shape s: AttentionShape, tokens n: Int, first: Int,
                   positions: [Int]? = nil) -> [Float] {
        let hd = s.headDim, group = s.heads / s.kvHeads, qd = s.heads * hd
        var out = [Float](repeating: 0, count: (n - first) * qd)
        for r in 0..<(n - first) {
            let t = first + r
            let pos = positions ?? Array(0..<n)
            let lo = (0...t).first { pos[t] - pos[$0] < (s.window ?? Int.max) }!
            for h in 0..<s.heads {
                let kv = h / group
                var scores: [Double] = []
                for j in lo...t {
                    var dot = 0.0
                    for i in 0..<hd { dot += Double(q[r * qd + h * hd + i]) * Double(k[j * s.cacheRowLength + kv * hd + i]) }
                    scores.append(dot * Double(s.scale))
                }
                let mx = scores.max()!
                let w = scores.map { Foundation.exp($0 - mx) }
                let total = w.reduce(0, +)
                for i in 0..<hd {
                    var acc = 0.0
                    for (jj, j) in (lo...t).enumerated() { acc += w[jj] * Double(v[j * s.cacheRowLength + kv * hd + i]) }
                    out[r * qd + h * hd + i] = Float(acc / total)
                }
            }
        }
        return out
    }

    /// With gaps in the positions (evicted tokens) a window spans positions, not tokens.
    @Test(arguments: [nil, 1, 5, 64] as [Int?], [false, true])
    func matchesTheDirectComputation(window: Int?, gaps: Bool) {
        var random = SplitMix64(seed: 11)
        func values(_ count: Int) -> [Float] { (0..<count).map { _ in Float.random(in: -1...1, using: &random) } }
        let shape = AttentionShape(heads: 4, kvHeads: 2, headDim: 8, cacheRowLength: 2 * 8 + 3, scale: 0.35, window: window)
        // 70 cached tokens, of which the last 67 are new queries (more than one query block).
        let n = 70, first = 3
        var k = values(n * shape.cacheRowLength), v = values(n * shape.cacheRowLength)
        var q = values((n - first) * shape.heads * shape.headDim)
        var out = [Float](repeating: 0, count: (n - first) * shape.heads * shape.headDim)
        let positions = gaps ? (0..<n).map { $0 * 3 + ($0 % 2) } : nil
        let expected = reference(q: q, k: k, v: v, shape: shape, tokens: n, first: first, positions: positions)
        q.withUnsafeMutableBufferPointer { qb in k.withUnsafeMutableBufferPointer { kb in
            v.withUnsafeMutableBufferPointer { vb in out.withUnsafeMutableBufferPointer { ob in
                Attention.causal(shape, queries: qb.baseAddress!, queryStride: shape.heads * shape.headDim, rows: n - first,
                                 first: first, keys: kb.baseAddress!, values: vb.baseAddress!, positions: positions,
                                 out: ob.baseAddress!)
            } }
        } }
        var worst: Float = 0
        for i in out.indices { worst = max(worst, abs(out[i] - expected[i])) }
        // Float32 dot products of 8 terms and sums of <= 70 weights: ~1e-6; 1e-4 is a wide margin.
        #expect(worst < 1e-4, "max difference \(worst)")
    }
}
