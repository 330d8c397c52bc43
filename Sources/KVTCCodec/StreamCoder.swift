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
    /// Offset of each group's plane in the one-byte-per-code form that ``decode(planes:meta:into:)``
    /// reads, and its size (tokens times components kept).
    let planeOffsets: [Int]
    let planeBytes: Int
    var metaBytes: Int { plan.groups.count * tokens * 4 }

    init(plan: BitPlan, tokens: Int) {
        self.plan = plan
        self.tokens = tokens
        var offsets: [Int] = [], planes: [Int] = []
        var o = 0, q = 0
        for g in plan.groups {
            offsets.append(o)
            planes.append(q)
            o += CodePacker.byteCount(codes: tokens * g.size, bits: g.type.bits)
            q += tokens * g.size
        }
        codeOffsets = offsets
        codeBytes = o
        planeOffsets = planes
        planeBytes = q
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

    /// Dequantizes code planes (one byte per code, ``planeOffsets``) and the metadata section
    /// into `tokens` rows of `plan.componentsUsed` coefficients (dropped components are
    /// zero). Throws on a non-finite shift or scale.
    func decode(planes codes: UnsafePointer<UInt8>, meta: UnsafePointer<UInt8>,
                into rows: UnsafeMutablePointer<Float>) throws(InvalidMetadata) {
        let width = plan.componentsUsed
        let n = tokens
        rows.update(repeating: 0, count: n * width)
        let groups = plan.groups
        let offsets = planeOffsets
        let box = UncheckedSendable((codes, meta, rows))
        let failure = Locked<InvalidMetadata?>(nil)
        Parallel.forEachRange(n, minimumPerTask: 64) { range in
            let (codes, meta, rows) = box.value
            for (gi, g) in groups.enumerated() {
                let m = meta + gi * n * 4
                let plane = codes + offsets[gi]
                for t in range {
                    guard let parameters = GroupQuantizer.decodedParameters(
                        shift: UInt16(m[t]) | UInt16(m[n + t]) << 8, scale: UInt16(m[2 * n + t]) | UInt16(m[3 * n + t]) << 8) else {
                        failure.withLock { $0 = $0 ?? InvalidMetadata(group: gi, token: t) }
                        return
                    }
                    let (shift, scale) = parameters
                    let out = rows + t * width + g.start
                    let p = plane + t * g.size
                    for i in 0..<g.size { out[i] = shift + Float(p[i]) * scale }
                }
            }
        }
        if let f = failure.current { throw f }
    }
}

/// How a blob stores the code section of each stream.
public enum CodeCoding: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Bit-packed planes, then the blob's lossless coder (DEFLATE by default), as in the
    /// paper.
    case packed = 0
    /// One static order-0 rANS model and stream per group plane (a plane the model would not
    /// shrink is kept packed); the blob's lossless coder is not applied on top.
    case rans = 1

    public var description: String { self == .packed ? "packed" : "rans" }

    /// Parses `packed` or `rans`.
    public init?(_ text: String) {
        guard let c = Self.allCases.first(where: { $0.description == text }) else { return nil }
        self = c
    }
}

extension StreamCoder {
    /// Errors reading an rANS-coded code section.
    struct InvalidCodeSection: Error { let reason: String }

    /// The rANS form of a packed code section (``codeBytes`` bytes): a directory of each
    /// group's payload length (varints), then per group a mode byte (0: the packed plane as
    /// it is; 1: the rANS model of the plane's codes, then its one-state rANS stream, as the
    /// first rANS blobs wrote; 2: the model, then a four-lane interleaved stream, written now).
    func ransSection(packed: [UInt8]) -> [UInt8] {
        let groups = plan.groups
        var payloads = [[UInt8]](repeating: [], count: groups.count)
        let offsets = codeOffsets, n = tokens
        packed.withUnsafeBufferPointer { src in
            let srcBox = UncheckedSendable(src.baseAddress!)
            payloads.withUnsafeMutableBufferPointer { out in
                let box = UncheckedSendable(out.baseAddress!)
                Parallel.forEach(groups.count) { gi in
                    let g = groups[gi], bits = g.type.bits, count = n * g.size
                    let plane = srcBox.value + offsets[gi]
                    let planeBytes = CodePacker.byteCount(codes: count, bits: bits)
                    var symbols = [UInt8](repeating: 0, count: count)
                    for i in 0..<count { symbols[i] = CodePacker.load(at: i, bits: bits, from: plane) }
                    var w = ByteWriter(capacity: planeBytes + 1)
                    let coded: [UInt8]? = symbols.withUnsafeBufferPointer { s in
                        let model = RANSModel(counting: s, alphabet: 1 << bits)
                        var m = ByteWriter()
                        model.write(to: &m)
                        let stream = RANS.encode(s, model: model, lanes: 4)
                        return m.bytes.count + stream.count < planeBytes ? m.bytes + stream : nil
                    }
                    if let coded {
                        w.u8(2); w.raw(coded)
                    } else {
                        w.u8(0); w.raw(UnsafeBufferPointer(start: plane, count: planeBytes))
                    }
                    box.value[gi] = w.bytes
                }
            }
        }
        var out = ByteWriter(capacity: payloads.reduce(0) { $0 + $1.count } + 4 * groups.count)
        for p in payloads { out.varint(p.count) }
        for p in payloads { out.raw(p) }
        return out.bytes
    }

    /// The code planes (one byte per code) of a packed code section (``codeBytes`` bytes).
    func codePlanes(packed: [UInt8]) -> [UInt8] {
        precondition(packed.count == codeBytes)
        var planes = [UInt8](repeating: 0, count: planeBytes)
        let groups = plan.groups, offsets = codeOffsets, planeOffsets = planeOffsets, n = tokens
        packed.withUnsafeBufferPointer { src in
            let srcBox = UncheckedSendable(src.baseAddress!)
            planes.withUnsafeMutableBufferPointer { dst in
                let box = UncheckedSendable(dst.baseAddress!)
                Parallel.forEach(groups.count) { gi in
                    let g = groups[gi]
                    Self.unpack(srcBox.value + offsets[gi], count: n * g.size, bits: g.type.bits, into: box.value + planeOffsets[gi])
                }
            }
        }
        return planes
    }

    /// The packed code section (``codeBytes`` bytes) of code planes.
    func packedSection(planes: [UInt8]) -> [UInt8] {
        precondition(planes.count == planeBytes)
        var packed = [UInt8](repeating: 0, count: codeBytes)
        packed.withUnsafeMutableBufferPointer { dst in
            for (gi, g) in plan.groups.enumerated() {
                for i in 0..<(tokens * g.size) {
                    CodePacker.store(planes[planeOffsets[gi] + i], at: i, bits: g.type.bits, in: dst.baseAddress! + codeOffsets[gi])
                }
            }
        }
        return packed
    }

    /// The code planes (one byte per code) that an rANS-coded section stands for, each
    /// group's stream decoded straight into its plane; throws when any part of it is malformed.
    func codePlanes(rans section: [UInt8]) throws(InvalidCodeSection) -> [UInt8] {
        let groups = plan.groups
        var r = ByteReader(section)
        var lengths: [Int] = []
        for _ in groups {
            guard let l = try? r.varint(max: section.count) else { throw InvalidCodeSection(reason: "code directory") }
            lengths.append(l)
        }
        var starts: [Int] = []
        var o = section.count - r.remaining
        for l in lengths { starts.append(o); o += l }
        guard o == section.count else { throw InvalidCodeSection(reason: "code section is \(section.count) bytes, its directory says \(o)") }
        var planes = [UInt8](repeating: 0, count: planeBytes)
        let offsets = planeOffsets, n = tokens
        let failure = Locked<String?>(nil)
        planes.withUnsafeMutableBufferPointer { dst in
            let box = UncheckedSendable(dst.baseAddress!)
            Parallel.forEach(groups.count) { gi in
                let g = groups[gi]
                if let problem = Self.decodePlane(section, range: starts[gi]..<(starts[gi] + lengths[gi]), count: n * g.size,
                                                  bits: g.type.bits, into: box.value + offsets[gi]) {
                    failure.withLock { $0 = $0 ?? "group \(gi): \(problem)" }
                }
            }
        }
        if let f = failure.current { throw InvalidCodeSection(reason: f) }
        return planes
    }

    /// `count` codes of `bits` bits, packed LSB-first at `packed`, one byte each into `plane`.
    private static func unpack(_ packed: UnsafePointer<UInt8>, count: Int, bits: Int, into plane: UnsafeMutablePointer<UInt8>) {
        if bits == 8 { plane.update(from: packed, count: count); return }
        for i in 0..<count { plane[i] = CodePacker.load(at: i, bits: bits, from: packed) }
    }

    /// Writes the `count` codes of `bits` bits that `section[range]` (one group's payload)
    /// stands for into `plane`, one byte each; returns what is wrong with it, if anything.
    private static func decodePlane(_ section: [UInt8], range: Range<Int>, count: Int, bits: Int,
                                    into plane: UnsafeMutablePointer<UInt8>) -> String? {
        let planeBytes = CodePacker.byteCount(codes: count, bits: bits)
        var r = ByteReader(section, range: range)
        guard let mode = try? r.u8() else { return "empty payload" }
        switch mode {
        case 0:
            guard r.remaining == planeBytes else { return "packed plane of \(r.remaining) bytes, expected \(planeBytes)" }
            section.withUnsafeBufferPointer { unpack($0.baseAddress! + range.lowerBound + 1, count: count, bits: bits, into: plane) }
            return nil
        case 1, 2:
            let model: RANSModel
            do { model = try RANSModel.read(from: &r, alphabet: 1 << bits) } catch { return error.description }
            let stream = (range.upperBound - r.remaining)..<range.upperBound
            var problem: RANSError?
            section.withUnsafeBytes { raw in
                do {
                    try RANS.decode(UnsafeRawBufferPointer(rebasing: raw[stream]), count: count, model: model,
                                    lanes: mode == 1 ? 1 : 4, into: plane)
                } catch { problem = error as? RANSError ?? .corruptStream }
            }
            return problem?.description
        default:
            return "unknown plane mode \(mode)"
        }
    }
}
