import KVTCNumerics

/// Conversion of ggml tensor data to single precision, following ggml's block layouts.
public enum Dequantize {
    /// Dequantizes `count` elements of `type` from `bytes` (which must hold whole blocks).
    public static func floats(_ bytes: UnsafeRawBufferPointer, type: GGMLType, count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { out, initialized in
            rows(bytes, type: type, count: count, into: out.baseAddress!)
            initialized = count
        }
    }

    /// Dequantizes in parallel over blocks into `out` (`count` elements).
    public static func rows(_ bytes: UnsafeRawBufferPointer, type: GGMLType, count: Int,
                            into out: UnsafeMutablePointer<Float>) {
        precondition(count % type.blockSize == 0, "element count must be whole blocks")
        let blocks = count / type.blockSize
        precondition(bytes.count >= blocks * type.blockBytes, "too few bytes for \(blocks) \(type) blocks")
        guard blocks > 0 else { return }
        let src = UncheckedRaw(bytes.baseAddress!)
        let dst = UncheckedFloats(out)
        Parallel.forEachRange(blocks, minimumPerTask: 4096) { range in
            for b in range {
                block(src.pointer + b * type.blockBytes, type: type,
                      into: dst.pointer + b * type.blockSize)
            }
        }
    }

    @inline(__always)
    static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        HalfPrecision.float(f16Bits: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    /// Dequantizes one block of `type` at `p` into `y` (`type.blockSize` values).
    @inline(__always)
    public static func block(_ p: UnsafeRawPointer, type: GGMLType, into y: UnsafeMutablePointer<Float>) {
        let q = p.assumingMemoryBound(to: UInt8.self)
        switch type {
        case .f32:
            y[0] = Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
        case .f16:
            y[0] = half(p, 0)
        case .bf16:
            y[0] = HalfPrecision.float(bf16Bits: UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
        case .q4_0:
            // d (f16), qs[16]: low nibbles are elements 0..15, high nibbles 16..31; offset 8.
            let d = half(p, 0)
            for j in 0..<16 {
                let v = q[2 + j]
                y[j] = Float(Int(v & 0x0F) - 8) * d
                y[j + 16] = Float(Int(v >> 4) - 8) * d
            }
        case .q4_1:
            // d (f16), m (f16), qs[16]: x = q * d + m.
            let d = half(p, 0), m = half(p, 2)
            for j in 0..<16 {
                let v = q[4 + j]
                y[j] = Float(v & 0x0F) * d + m
                y[j + 16] = Float(v >> 4) * d + m
            }
        case .q5_0, .q5_1:
            // d (f16), [m (f16)], qh (u32: 5th bits), qs[16]; Q5_0 is offset by 16.
            let d = half(p, 0)
            let hasMin = type == .q5_1
            let m: Float = hasMin ? half(p, 2) : 0
            let hOff = hasMin ? 4 : 2
            let qh = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: hOff, as: UInt32.self))
            let bias = hasMin ? 0 : 16
            for j in 0..<16 {
                let v = q[hOff + 4 + j]
                let h0 = Int(((qh >> UInt32(j)) << 4) & 0x10)
                let h1 = Int((qh >> UInt32(j + 12)) & 0x10)
                y[j] = Float((Int(v & 0x0F) | h0) - bias) * d + m
                y[j + 16] = Float((Int(v >> 4) | h1) - bias) * d + m
            }
        case .q8_0:
            // d (f16), qs[32] (int8).
            let d = half(p, 0)
            for j in 0..<32 { y[j] = Float(Int8(bitPattern: q[2 + j])) * d }
        case .q4_K:
            // d, dmin (f16), scales[12] (6-bit scale and min per 32), qs[128].
            let d = half(p, 0), dmin = half(p, 2)
            let sc = q + 4
            var qs = q + 16
            var out = y
            var s = 0
            for _ in 0..<4 {
                let (sc1, m1) = scaleMinK4(s, sc)
                let (sc2, m2) = scaleMinK4(s + 1, sc)
                let d1 = d * Float(sc1), mm1 = dmin * Float(m1)
                let d2 = d * Float(sc2), mm2 = dmin * Float(m2)
                for l in 0..<32 { out[l] = d1 * Float(qs[l] & 0x0F) - mm1 }
                for l in 0..<32 { out[32 + l] = d2 * Float(qs[l] >> 4) - mm2 }
                out += 64
                qs += 32
                s += 2
            }
        case .q6_K:
            // ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d (f16).
            let d = half(p, 208)
            var ql = q
            var qh = q + 128
            var sc = UnsafeRawPointer(q + 192).assumingMemoryBound(to: Int8.self)
            var out = y
            for _ in 0..<2 {
                for l in 0..<32 {
                    let iss = l / 16
                    let q1 = Int((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32
                    let q2 = Int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                    let q3 = Int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                    let q4 = Int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                    out[l] = d * Float(sc[iss]) * Float(q1)
                    out[l + 32] = d * Float(sc[iss + 2]) * Float(q2)
                    out[l + 64] = d * Float(sc[iss + 4]) * Float(q3)
                    out[l + 96] = d * Float(sc[iss + 6]) * Float(q4)
                }
                out += 128
                ql += 64
                qh += 32
                sc += 8
            }
        }
    }

    /// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a Q4_K block.
    @inline(__always)
    static func scaleMinK4(_ j: Int, _ q: UnsafePointer<UInt8>) -> (UInt8, UInt8) {
        if j < 4 {
            return (q[j] & 63, q[j + 4] & 63)
        }
        return ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

struct UncheckedRaw: @unchecked Sendable {
    let pointer: UnsafeRawPointer
    init(_ p: UnsafeRawPointer) { pointer = p }
}

struct UncheckedFloats: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    init(_ p: UnsafeMutablePointer<Float>) { pointer = p }
}
