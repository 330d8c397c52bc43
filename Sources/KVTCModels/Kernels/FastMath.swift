import Foundation
import KVTCNumerics

/// Vectorised elementwise kernels of the forward pass (the matrix work goes through BLAS).
///
/// Debug builds (`-Onone`) use plain scalar loops instead: unspecialised generic SIMD code
/// is two orders of magnitude slower there, which would make model tests take minutes.
/// The two paths agree to float rounding (~1e-7 relative).
enum FastMath {
    typealias V = SIMD8<Float>

    /// `exp(x)` for 8 lanes, Cephes-style polynomial (relative error ~1e-7), inputs clamped
    /// to [-87.3, 88.7].
    @inline(__always)
    static func exp8(_ x0: V) -> V {
        // Comparisons and `replacing` compile to vector min/max; `clamped` and
        // `pointwiseMin/Max` are not inlined and cost a call per 8 lanes.
        let lo = V(repeating: -87.3), hi = V(repeating: 88.7)
        var x = x0.replacing(with: lo, where: x0 .< lo)
        x = x.replacing(with: hi, where: x .> hi)
        let magic = V(repeating: 12582912.0) // 1.5 * 2^23: adding it rounds to an integer
        let t = x * V(repeating: 1.44269504088896341) + magic
        let n = t - magic
        var r = x - n * V(repeating: 0.693359375)
        r = r - n * V(repeating: -2.12194440e-4)
        var p = V(repeating: 1.9875691500e-4)
        p = p * r + V(repeating: 1.3981999507e-3)
        p = p * r + V(repeating: 8.3334519073e-3)
        p = p * r + V(repeating: 4.1665795894e-2)
        p = p * r + V(repeating: 1.6666665459e-1)
        p = p * r + V(repeating: 5.0000001201e-1)
        let y = p * r * r + r + V(repeating: 1)
        let ti = unsafeBitCast(t, to: SIMD8<Int32>.self) &- SIMD8<Int32>(repeating: 0x4B40_0000)
        let scale = unsafeBitCast((ti &+ SIMD8<Int32>(repeating: 127)) &<< SIMD8<Int32>(repeating: 23), to: V.self)
        return y * scale
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
        let s = V(repeating: scale), m = V(repeating: shift)
        var i = 0
        let raw = UnsafeMutableRawPointer(x)
        while i + 8 <= count {
            let v = raw.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            let e = exp8(v * s - m)
            raw.storeBytes(of: e, toByteOffset: i * 4, as: V.self)
            acc += e
            i += 8
        }
        var sum = acc.sum()
        while i < count {
            let e = exp(x[i] * scale - shift)
            x[i] = e
            sum += e
            i += 1
        }
        return sum
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
