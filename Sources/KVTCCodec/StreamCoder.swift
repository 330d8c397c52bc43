import KVTCNumerics

/// Packs and unpacks one stream's quantized PCA coefficients.
///
/// Layout before DEFLATE (decided by measurement, see README): *group-major*. The code
/// section holds one plane per kept group, in plan order; a plane holds the group's codes
/// for token 0, then token 1, ..., bit-packed LSB-first at the group's width. The metadata
/// section holds, per group, the fp16 shifts of all tokens split into a plane of low bytes
/// and a plane of high bytes, then the scales likewise. Neighbouring tokens have similar
/// statistics per group, which DEFLATE exploits.
struct StreamCoder {
    let plan: BitPlan
    let tokens: Int

    /// Byte offset of each group's code plane, and the section size.
    let codeOffsets: [Int]
    let codeBytes: Int
    var metaBytes: Int { plan.groups.count * tokens * 4 }

    init(plan: BitPlan, tokens: Int) {
        self.plan = plan
        self.tokens = tokens
        var offsets: [Int] = []
        var o = 0
        for g in plan.groups {
            offsets.append(o)
            o += CodePacker.byteCount(codes: tokens * g.size, bits: g.type.bits)
        }
        codeOffsets = offsets
        codeBytes = o
    }

    /// Quantizes `tokens` rows of coefficients (row stride `stride`, minus `offset[j]` per
    /// component when given) into code and metadata sections.
    func encode(rows: UnsafePointer<Float>, stride: Int, subtract offset: UnsafePointer<Float>?,
                codes: UnsafeMutablePointer<UInt8>, meta: UnsafeMutablePointer<UInt8>) {
        codes.update(repeating: 0, count: codeBytes)
        let groups = plan.groups
        let n = tokens
        let box = UncheckedSendable((rows, offset, codes, meta))
        let offsets = codeOffsets
        let width = plan.componentsUsed
        // Blocks of 8 tokens start every plane on a byte boundary, so tasks never share bytes.
        let blocks = (n + 7) / 8
        Parallel.forEachRange(blocks, minimumPerTask: 4) { blockRange in
            let (rows, offset, codes, meta) = box.value
            var row = [Float](repeating: 0, count: width)
            for t in (blockRange.lowerBound * 8)..<min(n, blockRange.upperBound * 8) {
                let src = rows + t * stride
                if let offset { for j in 0..<width { row[j] = src[j] - offset[j] } } else { for j in 0..<width { row[j] = src[j] } }
                row.withUnsafeBufferPointer { r in
                    for (gi, g) in groups.enumerated() {
                        let x = r.baseAddress! + g.start
                        let (lo, hi) = GroupQuantizer.bounds(x, count: g.size)
                        let (sh, sc) = GroupQuantizer.parameters(lo: lo, hi: hi, maxCode: g.type.maxCode)
                        let m = meta + gi * n * 4
                        m[t] = UInt8(sh & 0xFF); m[n + t] = UInt8(sh >> 8)
                        m[2 * n + t] = UInt8(sc & 0xFF); m[3 * n + t] = UInt8(sc >> 8)
                        let plane = codes + offsets[gi]
                        let bits = g.type.bits
                        let first = t * g.size
                        _ = GroupQuantizer.quantize(x, count: g.size, maxCode: g.type.maxCode,
                                                    shift: Float(Float16(bitPattern: sh)),
                                                    scale: Float(Float16(bitPattern: sc))) { i, q in
                            CodePacker.store(q, at: first + i, bits: bits, in: plane)
                        }
                    }
                }
            }
        }
    }

    /// Errors from decoding sections.
    struct InvalidMetadata: Error { let group: Int; let token: Int }

    /// Dequantizes sections into `tokens` rows of `plan.componentsUsed` coefficients
    /// (dropped components are zero). Throws on a non-finite shift or scale.
    func decode(codes: UnsafePointer<UInt8>, meta: UnsafePointer<UInt8>,
                into rows: UnsafeMutablePointer<Float>) throws(InvalidMetadata) {
        let width = plan.componentsUsed
        let n = tokens
        rows.update(repeating: 0, count: n * width)
        let groups = plan.groups
        let offsets = codeOffsets
        let box = UncheckedSendable((codes, meta, rows))
        let failure = Locked<InvalidMetadata?>(nil)
        Parallel.forEachRange(n, minimumPerTask: 64) { range in
            let (codes, meta, rows) = box.value
            for (gi, g) in groups.enumerated() {
                let m = meta + gi * n * 4
                let plane = codes + offsets[gi]
                let bits = g.type.bits
                for t in range {
                    guard let parameters = GroupQuantizer.decodedParameters(
                        shift: UInt16(m[t]) | UInt16(m[n + t]) << 8, scale: UInt16(m[2 * n + t]) | UInt16(m[3 * n + t]) << 8) else {
                        failure.withLock { $0 = $0 ?? InvalidMetadata(group: gi, token: t) }
                        return
                    }
                    let (shift, scale) = parameters
                    let out = rows + t * width + g.start
                    let first = t * g.size
                    switch bits {
                    case 8:
                        let p = plane + first
                        for i in 0..<g.size { out[i] = shift + Float(p[i]) * scale }
                    default:
                        for i in 0..<g.size { out[i] = shift + Float(CodePacker.load(at: first + i, bits: bits, from: plane)) * scale }
                    }
                }
            }
        }
        if let f = failure.current { throw f }
    }
}
