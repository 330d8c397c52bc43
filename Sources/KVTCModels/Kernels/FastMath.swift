import Foundation
import KVTCNumerics

/// Vectorised elementwise kernels of the forward pass (the matrix work goes through BLAS).
///
/// Debug builds (`-Onone`) use plain scalar loops instead: unspecialised generic SIMD code
/// is two orders of magnitude slower there, which would make model tests take minutes.
/// The two paths agree to float rounding (~1e-7 relative).
enum FastMath {
    typealias V = SIMD8<Float>

    /// `exp(x)` for 8 lanes as `2^(x log2 e)` (relative error ~2e-7 + |x| 2^-23), inputs
    /// clamped to about [-87.34, 88.03] (`2^-126 ... 2^127`).
    @inline(__always)
    static func exp8(_ x: V) -> V { exp2x8(x * V(repeating: log2e)) }

    static let log2e: Float = 1.44269504088896341

    /// `2^y` for 8 lanes, `y` clamped to [-126, 127]: `y = n + f` with `n` an integer and
    /// `|f| <= 1/2`, `2^f` by Cephes' `exp2f` polynomial (relative error ~2e-7) in fused
    /// multiply-adds, `2^n` built in the exponent bits.
    @inline(__always)
    static func exp2x8(_ y0: V) -> V {
        // Comparisons and `replacing` compile to vector min/max; `clamped` and
        // `pointwiseMin/Max` are not inlined and cost a call per 8 lanes.
        let lo = V(repeating: -126), hi = V(repeating: 127)
        var y = y0.replacing(with: lo, where: y0 .< lo)
        y = y.replacing(with: hi, where: y .> hi)
        let magic = V(repeating: 12582912.0) // 1.5 * 2^23: adding it rounds to an integer
        let t = y + magic
        let f = y - (t - magic)
        var p = V(repeating: 1.535336188319500e-4)
        p = V(repeating: 1.339887440266574e-3).addingProduct(p, f)
        p = V(repeating: 9.618437357674640e-3).addingProduct(p, f)
        p = V(repeating: 5.550332471162809e-2).addingProduct(p, f)
        p = V(repeating: 2.402264791363012e-1).addingProduct(p, f)
        p = V(repeating: 6.931472028550421e-1).addingProduct(p, f)
        p = V(repeating: 1).addingProduct(p, f)
        let n = unsafeBitCast(t, to: SIMD8<Int32>.self) &- SIMD8<Int32>(repeating: 0x4B40_0000)
        return p * unsafeBitCast((n &+ SIMD8<Int32>(repeating: 127)) &<< SIMD8<Int32>(repeating: 23), to: V.self)
    }

    /// Scalar `exp`.
    @inline(__always)
    static func exp(_ x: Float) -> Float { Foundation.expf(x) }

    /// Replaces `x[i]` by `exp(scale * x[i] - shift)` for `i < count` and returns the sum.
    @inline(__always)
    static func expShiftedSum(_ x: UnsafeMutablePointer<Float>, count: Int, scale: Float, shift: Float) -> Float {
        #if DEBUG
        var sum: Float = 0
        for i in 0..<count {
            let e = exp(x[i] * scale - shift)
            x[i] = e
            sum += e
        }
        return sum
        #else
        var acc = V(repeating: 0)
        // exp(scale x - shift) = 2^(x scale log2 e - shift log2 e): one fused multiply-add.
        let s = V(repeating: scale * log2e), m = V(repeating: -shift * log2e)
        var i = 0
        let raw = UnsafeMutableRawPointer(x)
        while i + 8 <= count {
            let v = raw.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            let e = exp2x8(m.addingProduct(v, s))
            raw.storeBytes(of: e, toByteOffset: i * 4, as: V.self)
            acc += e
            i += 8
        }
        // The last `count - i < 8` values through the same kernel, so every lane rounds alike.
        if i < count {
            var v = V(repeating: 0)
            for j in 0..<(count - i) { v[j] = x[i + j] }
            let e = exp2x8(m.addingProduct(v, s))
            for j in 0..<(count - i) { x[i + j] = e[j]; acc[j] += e[j] }
        }
        return acc.sum()
        #endif
    }

    /// The maximum of `count >= 1` values.
    @inline(__always)
    static func max(_ x: UnsafePointer<Float>, count: Int) -> Float {
        #if DEBUG
        var r = x[0]
        for i in 1..<count where x[i] > r { r = x[i] }
        return r
        #else
        var m = V(repeating: -.infinity)
        var i = 0
        let raw = UnsafeRawPointer(x)
        while i + 8 <= count {
            let v = raw.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            m = m.replacing(with: v, where: v .> m)
            i += 8
        }
        var r = m.max()
        while i < count { r = Swift.max(r, x[i]); i += 1 }
        return r
        #endif
    }

    /// `out[i] = silu(gate[i]) * up[i]` for `count` values.
    @inline(__always)
    static func swiglu(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
        #if DEBUG
        for i in 0..<count { out[i] = gate[i] / (1 + exp(-gate[i])) * up[i] }
        #else
        var i = 0
        let g = UnsafeRawPointer(gate), u = UnsafeRawPointer(up), o = UnsafeMutableRawPointer(out)
        let one = V(repeating: 1)
        while i + 8 <= count {
            let gv = g.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            let uv = u.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            o.storeBytes(of: gv / (one + exp8(-gv)) * uv, toByteOffset: i * 4, as: V.self)
            i += 8
        }
        while i < count {
            out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]
            i += 1
        }
        #endif
    }

    /// `out[i] = gelu(gate[i]) * up[i]` for `count` values, GELU in its tanh form
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, with `tanh(z) = 1 - 2 / (exp(2z) + 1)`.
    @inline(__always)
    static func geglu(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
        let c: Float = 0.7978845608028654, k: Float = 0.044715
        #if DEBUG
        for i in 0..<count {
            let x = gate[i], z = c * (x + k * x * x * x)
            out[i] = 0.5 * x * (2 - 2 / (exp(2 * z) + 1)) * up[i]
        }
        #else
        var i = 0
        let g = UnsafeRawPointer(gate), u = UnsafeRawPointer(up), o = UnsafeMutableRawPointer(out)
        let one = V(repeating: 1), two = V(repeating: 2), half = V(repeating: 0.5)
        let cv = V(repeating: c), kv = V(repeating: k)
        while i + 8 <= count {
            let x = g.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            let uv = u.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            let z = cv * (x + kv * x * x * x)
            let t = one - two / (exp8(two * z) + one)
            o.storeBytes(of: half * x * (one + t) * uv, toByteOffset: i * 4, as: V.self)
            i += 8
        }
        while i < count {
            let x = gate[i], z = c * (x + k * x * x * x)
            out[i] = 0.5 * x * (2 - 2 / (exp(2 * z) + 1)) * up[i]
            i += 1
        }
        #endif
    }

    /// RMS normalisation of one row: `out = x / sqrt(mean(x^2) + eps) * weight`.
    @inline(__always)
    static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, eps: Float,
                        out: UnsafeMutablePointer<Float>, count: Int) {
        #if DEBUG
        var ss: Float = 0
        for i in 0..<count { ss += x[i] * x[i] }
        #else
        var acc = V(repeating: 0)
        var i = 0
        let raw = UnsafeRawPointer(x)
        while i + 8 <= count {
            let v = raw.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            acc += v * v
            i += 8
        }
        var ss = acc.sum()
        while i < count { ss += x[i] * x[i]; i += 1 }
        #endif
        let scale = 1 / (ss / Float(count) + eps).squareRoot()
        for j in 0..<count { out[j] = x[j] * scale * weight[j] }
    }

    /// RMS-normalises `rows` rows of `width` values (in parallel over rows).
    static func rmsNormRows(_ x: UnsafeMutablePointer<Float>, weight: [Float], eps: Float,
                            out: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
        weight.withUnsafeBufferPointer { w in
            let x = UncheckedSendable(x), out = UncheckedSendable(out), w = UncheckedSendable(w.baseAddress!)
            Parallel.forEachRange(rows, minimumPerTask: 64) { range in
                for r in range {
                    rmsNorm(x.value + r * width, weight: w.value, eps: eps, out: out.value + r * width, count: width)
                }
            }
        }
    }
}
