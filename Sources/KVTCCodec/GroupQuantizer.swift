import KVTCNumerics

/// Uniform min-max quantization of one group of values with an fp16 shift and scale: the
/// quantizer of KVTC's PCA coefficients, and of the per-token and KIVI baselines.
///
/// The shift (the group's minimum) and the scale (`range / maxCode`) are stored as fp16;
/// the encoder quantizes against the fp16-rounded values so that encoder and decoder agree
/// exactly. Codes are `round((x - shift) / scale)` (ties to even) clamped to `0...maxCode`;
/// a zero scale (constant group) gives zero codes. Magnitudes beyond fp16's range saturate.
/// A value is restored as `shift + code * scale`.
public enum GroupQuantizer {
    /// The largest finite fp16 value.
    public static let f16Max: Float = 65504

    /// The smallest and largest of `count` values (`(0, 0)` for none): the span that
    /// ``parameters(lo:hi:maxCode:)`` takes.
    @inlinable
    public static func bounds(_ x: UnsafePointer<Float>, count: Int) -> (lo: Float, hi: Float) {
        guard count > 0 else { return (0, 0) }
        var lo = x[0], hi = x[0]
        for i in 1..<count { lo = min(lo, x[i]); hi = max(hi, x[i]) }
        return (lo, hi)
    }

    /// fp16 bits of shift and scale for a group whose values span `lo...hi`.
    @inlinable
    public static func parameters(lo: Float, hi: Float, maxCode: Int) -> (shift: UInt16, scale: UInt16) {
        let shift = Float16(max(-f16Max, min(f16Max, lo)))
        let range = hi - Float(shift)
        var scale = Float16(max(0, min(f16Max, range / Float(maxCode))))
        // Round the scale up so that `hi` stays representable (avoid clipping the maximum).
        if Float(scale) * Float(maxCode) < range, scale < Float16(f16Max) { scale = scale.nextUp }
        return (shift.bitPattern, scale.bitPattern)
    }

    /// The shift and scale that fp16 bits stand for, or `nil` when either is not finite or
    /// the scale is negative (no encoder writes such parameters: the bytes are corrupt).
    @inlinable
    public static func decodedParameters(shift: UInt16, scale: UInt16) -> (shift: Float, scale: Float)? {
        let sh = Float16(bitPattern: shift), sc = Float16(bitPattern: scale)
        guard sh.isFinite, sc.isFinite, !(sc < 0) else { return nil }
        return (Float(sh), Float(sc))
    }

    /// Quantizes `count` values into codes, passing each code to `codes` with its index, and
    /// returns the squared error.
    ///
    /// - Parameters:
    ///   - shift: the fp16-rounded shift (``parameters(lo:hi:maxCode:)``, as a float).
    ///   - scale: the fp16-rounded scale, likewise.
    @inlinable
    public static func quantize(_ x: UnsafePointer<Float>, count: Int, maxCode: Int,
                                shift: Float, scale: Float, codes: (Int, UInt8) -> Void) -> Float {
        let inv: Float = scale > 0 ? 1 / scale : 0
        let top = Float(maxCode)
        var err: Float = 0
        for i in 0..<count {
            let q = min(top, max(0, ((x[i] - shift) * inv).rounded(.toNearestOrEven)))
            let d = shift + q * scale - x[i]
            err += d * d
            codes(i, UInt8(q))
        }
        return err
    }

    /// Squared error of quantizing `count` values spanning `lo...hi` (no codes kept).
    @inlinable
    public static func error(_ x: UnsafePointer<Float>, count: Int, lo: Float, hi: Float, maxCode: Int) -> Float {
        let p = parameters(lo: lo, hi: hi, maxCode: maxCode)
        return quantize(x, count: count, maxCode: maxCode, shift: Float(Float16(bitPattern: p.shift)),
                        scale: Float(Float16(bitPattern: p.scale))) { _, _ in }
    }

    /// One group quantized on its own: one code per value and the fp16 bits of its
    /// parameters.
    public struct Group: Sendable, Equatable {
        /// One code per value, each in `0...maxCode`.
        public var codes: [UInt8]
        /// fp16 bits of the shift.
        public var shift: UInt16
        /// fp16 bits of the scale.
        public var scale: UInt16

        public init(codes: [UInt8], shift: UInt16, scale: UInt16) {
            self.codes = codes
            self.shift = shift
            self.scale = scale
        }
    }

    /// Quantizes `values` as one group to codes of `bits` bits (`maxCode = 2^bits - 1`).
    public static func quantize(_ values: [Float], bits: Int) -> Group {
        let maxCode = (1 << bits) - 1
        var codes = [UInt8](repeating: 0, count: values.count)
        let p = values.withUnsafeBufferPointer { x -> (shift: UInt16, scale: UInt16) in
            guard let base = x.baseAddress else { return parameters(lo: 0, hi: 0, maxCode: maxCode) }
            let (lo, hi) = bounds(base, count: x.count)
            let p = parameters(lo: lo, hi: hi, maxCode: maxCode)
            _ = quantize(base, count: x.count, maxCode: maxCode, shift: Float(Float16(bitPattern: p.shift)),
                         scale: Float(Float16(bitPattern: p.scale))) { i, q in codes[i] = q }
            return p
        }
        return Group(codes: codes, shift: p.shift, scale: p.scale)
    }

    /// The values a group's codes stand for, or `nil` when its parameters are invalid
    /// (see ``decodedParameters(shift:scale:)``).
    public static func dequantize(_ group: Group) -> [Float]? {
        guard let p = decodedParameters(shift: group.shift, scale: group.scale) else { return nil }
        return group.codes.map { p.shift + Float($0) * p.scale }
    }
}

/// Bit packing of quantization codes: code `i` of width `bits` (1...8) occupies bits
/// `i * bits ..< (i + 1) * bits` of a byte stream, least significant bit first. Codes of 3 or
/// 6 bits may straddle two bytes; a run of 8 codes always ends on a byte boundary.
public enum CodePacker {
    /// Bytes that `count` codes of `bits` bits occupy.
    @inlinable
    public static func byteCount(codes count: Int, bits: Int) -> Int { (count * bits + 7) / 8 }

    /// Writes `code` as code number `index` into `bytes`, whose bits there must be zero.
    @inlinable
    public static func store(_ code: UInt8, at index: Int, bits: Int, in bytes: UnsafeMutablePointer<UInt8>) {
        let bit = index * bits
        let shift = bit & 7
        bytes[bit >> 3] |= code << UInt8(shift)
        if shift + bits > 8 { bytes[(bit >> 3) + 1] |= code >> UInt8(8 - shift) }
    }

    /// Code number `index` of `bytes`.
    @inlinable
    public static func load(at index: Int, bits: Int, from bytes: UnsafePointer<UInt8>) -> UInt8 {
        let bit = index * bits
        let shift = bit & 7
        var word = UInt16(bytes[bit >> 3])
        if shift + bits > 8 { word |= UInt16(bytes[(bit >> 3) + 1]) << 8 }
        return UInt8(truncatingIfNeeded: (word >> UInt16(shift)) & UInt16((1 << bits) - 1))
    }

    /// Packs `codes` of `bits` bits into ``byteCount(codes:bits:)`` bytes.
    public static func pack(_ codes: [UInt8], bits: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: byteCount(codes: codes.count, bits: bits))
        out.withUnsafeMutableBufferPointer { o in
            for (i, c) in codes.enumerated() { store(c, at: i, bits: bits, in: o.baseAddress!) }
        }
        return out
    }

    /// The first `count` codes of `bits` bits packed in `bytes`, which must hold at least
    /// ``byteCount(codes:bits:)`` bytes.
    public static func unpack(_ bytes: ArraySlice<UInt8>, count: Int, bits: Int) -> [UInt8] {
        precondition(bytes.count >= byteCount(codes: count, bits: bits))
        return bytes.withUnsafeBufferPointer { b in (0..<count).map { load(at: $0, bits: bits, from: b.baseAddress!) } }
    }
}

extension GroupErrorTable {
    /// Measures every candidate group's error on projected calibration rows.
    ///
    /// - Parameters:
    ///   - rows: `count x stride` row-major PCA coefficients (centered data times basis^T);
    ///     the first `components` columns are used.
    public static func measure(rows: UnsafePointer<Float>, count: Int, stride: Int, components: Int,
                               sizes: [Int] = BitPlan.standardGroupSizes,
                               types: [ComponentType] = ComponentType.allCases) -> GroupErrorTable {
        let sizes = sizes.sorted()
        let nt = types.count
        // Per task accumulators, merged afterwards.
        let tasks = max(1, min(Parallel.coreCount * 4, count))
        let per = (count + tasks - 1) / tasks
        let layoutCounts = sizes.map { components / $0 }
        var partials = [[[[Double]]]](repeating: sizes.indices.map { [[Double]](repeating: [Double](repeating: 0, count: layoutCounts[$0]), count: nt) }, count: tasks)
        let rowsBox = UncheckedSendable(rows)
        partials.withUnsafeMutableBufferPointer { parts in
            let partsBox = UncheckedSendable(parts.baseAddress!)
            Parallel.forEach(tasks) { task in
                let lo = task * per, hi = min(count, lo + per)
                guard lo < hi else { return }
                var acc = partsBox.value[task]
                for row in lo..<hi {
                    let x = rowsBox.value + row * stride
                    for (si, s) in sizes.enumerated() {
                        for g in 0..<layoutCounts[si] {
                            let p = x + g * s
                            var mn = p[0], mx = p[0], sq: Float = 0
                            for i in 0..<s { let v = p[i]; mn = min(mn, v); mx = max(mx, v); sq += v * v }
                            for (ti, t) in types.enumerated() {
                                let e = t == .dropped ? sq : GroupQuantizer.error(p, count: s, lo: mn, hi: mx, maxCode: t.maxCode)
                                acc[si][ti][g] += Double(e)
                            }
                        }
                    }
                }
                partsBox.value[task] = acc
            }
        }
        var errors = partials[0]
        for t in partials.dropFirst() {
            for si in errors.indices { for ti in 0..<nt { for g in errors[si][ti].indices { errors[si][ti][g] += t[si][ti][g] } } }
        }
        return GroupErrorTable(components: components, sizes: sizes, types: types, errors: errors)
    }
}
