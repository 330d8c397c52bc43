import KVTCNumerics

/// Uniform min-max quantization of one group of components for one token.
///
/// The shift (the group's minimum) and the scale (`range / maxCode`) are stored as fp16;
/// the encoder quantizes against the fp16-rounded values so that encoder and decoder agree
/// exactly. Codes are `round((x - shift) / scale)` clamped to `0...maxCode`; a zero scale
/// (constant group) gives zero codes. Magnitudes beyond fp16's range saturate.
@usableFromInline
struct GroupQuantizer {
    @usableFromInline static let f16Max: Float = 65504

    /// fp16 bits of shift and scale for a group whose values span `lo...hi`.
    @inlinable
    static func parameters(lo: Float, hi: Float, maxCode: Int) -> (shift: UInt16, scale: UInt16) {
        let shift = Float16(max(-f16Max, min(f16Max, lo)))
        let range = hi - Float(shift)
        var scale = Float16(max(0, min(f16Max, range / Float(maxCode))))
        // Round the scale up so that `hi` stays representable (avoid clipping the maximum).
        if Float(scale) * Float(maxCode) < range, scale < Float16(f16Max) { scale = scale.nextUp }
        return (shift.bitPattern, scale.bitPattern)
    }

    /// Quantizes `count` values into codes, returning the squared error.
    @inlinable
    static func quantize(_ x: UnsafePointer<Float>, count: Int, maxCode: Int,
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
    static func error(_ x: UnsafePointer<Float>, count: Int, lo: Float, hi: Float, maxCode: Int) -> Float {
        let p = parameters(lo: lo, hi: hi, maxCode: maxCode)
        return quantize(x, count: count, maxCode: maxCode, shift: Float(Float16(bitPattern: p.shift)),
                        scale: Float(Float16(bitPattern: p.scale))) { _, _ in }
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
