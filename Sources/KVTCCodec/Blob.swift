import KVTCCache
import KVTCNumerics

/// Errors reading or producing a compressed cache blob.
public enum BlobError: Error, Equatable, CustomStringConvertible {
    case notABlob
    case unsupportedVersion(Int)
    case truncated(String)
    case corrupt(String)
    case profileMismatch(blob: String, profile: String)

    public var description: String {
        switch self {
        case .notABlob: return "not a kvtc blob (bad magic)"
        case .unsupportedVersion(let v): return "blob format version \(v) is not supported (this build reads versions 1 to \(Blob.formatVersion))"
        case .truncated(let m): return "blob is truncated: \(m)"
        case .corrupt(let m): return "blob is corrupt: \(m)"
        case .profileMismatch(let b, let p): return "blob was made with profile \(b.prefix(16))…, not with the given profile \(p.prefix(16))…"
        }
    }
}

/// What one section of a blob holds.
enum SectionKind: UInt8, CaseIterable {
    case keyCodes = 1, keyMeta, valueCodes, valueMeta, protectedKeys, protectedValues, positions
    /// Version 4: codes and metadata of the out-of-window rows (full-context layers only).
    case outOfWindowKeyCodes, outOfWindowKeyMeta, outOfWindowValueCodes, outOfWindowValueMeta
}

/// The parsed header of a blob.
struct BlobHeader: Equatable {
    var profileHash: [UInt8]
    var geometry: KVGeometry
    var rope: RoPE
    /// Every layer's rotation and window when the layers differ (version 3); `nil` when
    /// every layer uses ``rope`` over the whole context.
    var layerAttention: [LayerAttention]?
    var tokens: Int
    var leadingProtected: Int
    var trailingProtected: Int
    var nominalRatio: Double
    var keyPlan: BitPlan
    var valuePlan: BitPlan
    /// How protected tokens are stored.
    var protectedEncoding: ExactRowEncoding
    /// Positions are `firstPosition + i` when no positions section is present.
    var firstPosition: Int
    var explicitPositions: Bool
    var model: String
    /// How the code sections are stored (version 2; version 1 is always packed).
    var codeCoding: CodeCoding = .packed
    /// The first of the compressed tokens that no sliding window can see any more, stored
    /// for the full-context layers only (version 4; 0 otherwise).
    var outOfWindowTokens = 0
    /// Their plans (version 4).
    var outOfWindowPlan: (keys: BitPlan, values: BitPlan)?

    static func == (a: BlobHeader, b: BlobHeader) -> Bool {
        a.profileHash == b.profileHash && a.geometry == b.geometry && a.rope == b.rope && a.layerAttention == b.layerAttention
            && a.tokens == b.tokens && a.leadingProtected == b.leadingProtected && a.trailingProtected == b.trailingProtected
            && a.nominalRatio == b.nominalRatio && a.keyPlan == b.keyPlan && a.valuePlan == b.valuePlan
            && a.protectedEncoding == b.protectedEncoding && a.firstPosition == b.firstPosition
            && a.explicitPositions == b.explicitPositions && a.model == b.model && a.codeCoding == b.codeCoding
            && a.outOfWindowTokens == b.outOfWindowTokens && a.outOfWindowPlan?.keys == b.outOfWindowPlan?.keys
            && a.outOfWindowPlan?.values == b.outOfWindowPlan?.values
    }

    /// Tokens between the protected ones: out-of-window rows, then full rows.
    var compressedTokens: Int { tokens - leadingProtected - trailingProtected }
    /// Compressed tokens stored with every layer.
    var fullRows: Int { compressedTokens - outOfWindowTokens }
    /// Index of the first full row.
    var firstFullRow: Int { leadingProtected + outOfWindowTokens }
    /// Every layer's rotation and window.
    var attention: [LayerAttention] { layerAttention ?? LayerAttention.uniform(rope, layers: geometry.layers) }
    /// The rotation of the keys, layer by layer.
    var keyRotation: KeyRotation { KeyRotation(geometry: geometry, layers: attention) }
}

/// One stored chunk of a section.
struct SectionChunk: Equatable {
    var kind: SectionKind
    var rawLength: Int
    var storedLength: Int
    /// 0: stored as they are; otherwise a ``LosslessCoder/identifier``.
    var coding: UInt8
    var crc: UInt32
}

/// The blob container.
///
///     magic "KVTCBLOB" | version u32 | header length u32 | header | header CRC-32 u32 | chunks
///
/// Version 2 adds coders other than DEFLATE (a chunk's coding byte may be 2, Zstandard),
/// 3- and 6-bit groups in the plans, and rANS-coded code sections (a code-coding byte after
/// the model name); a blob that uses none of them is written as version 1, which it is byte
/// for byte, so earlier readers still read it.
///
/// The header holds the profile hash, geometry, RoPE, token counts, both bit plans, how
/// protected tokens and positions are stored, and the chunk table (kind, raw and stored
/// lengths, coding, CRC-32 of the stored bytes). Sections are split into chunks of at most
/// ``chunkLimit`` raw bytes so that DEFLATE runs on both cores in both directions.
///
/// Version 3 adds every layer's rotation and window (after the code-coding byte); version 4
/// the out-of-window rows: their count (i64) and key and value plans after the layer table.
public enum Blob {
    public static let formatVersion = 4
    static let magic = Array("KVTCBLOB".utf8)
    static let chunkLimit = 1 << 20

    static func writePlan(_ p: BitPlan, _ w: inout ByteWriter) {
        w.u32(UInt32(p.groups.count))
        for g in p.groups { w.u32(UInt32(g.start)); w.u32(UInt32(g.size)); w.u8(UInt8(g.type.rawValue)) }
    }

    static func readPlan(_ r: inout ByteReader<[UInt8]>) throws(ByteReaderOutOfBounds) -> BitPlan? {
        let n = Int(try r.u32())
        guard n <= 1 << 20 else { return nil }
        var groups: [PlanGroup] = []
        for _ in 0..<n {
            let start = Int(try r.u32()), size = Int(try r.u32())
            guard let t = ComponentType(rawValue: Int(try r.u8())), t != .dropped else { return nil }
            groups.append(PlanGroup(start: start, size: size, type: t))
        }
        return BitPlan(groups: groups)
    }

    /// Assembles a blob from its header and raw sections, entropy-coding each chunk.
    static func assemble(header h: BlobHeader, sections: [(SectionKind, [UInt8], Bool)], coder: LosslessCoder) -> (bytes: [UInt8], chunks: [SectionChunk]) {
        // Split into chunks.
        var pieces: [(SectionKind, ArraySlice<UInt8>, Bool)] = []
        for (kind, raw, compress) in sections {
            var o = 0
            repeat {
                let e = min(raw.count, o + chunkLimit)
                pieces.append((kind, raw[o..<e], compress))
                o = e
            } while o < raw.count
        }
        var stored = [(bytes: [UInt8], coding: UInt8)](repeating: ([], 0), count: pieces.count)
        stored.withUnsafeMutableBufferPointer { out in
            let box = UncheckedSendable(out.baseAddress!)
            let piecesBox = UncheckedSendable(pieces)
            Parallel.forEach(pieces.count) { i in
                let (_, raw, compress) = piecesBox.value[i]
                // A chunk the coder does not shrink is stored as it is.
                if compress, !raw.isEmpty, let d = raw.withUnsafeBytes({ coder.encode($0) }), d.count < raw.count {
                    box.value[i] = (d, coder.identifier)
                } else {
                    box.value[i] = (Array(raw), 0)
                }
            }
        }
        var chunks: [SectionChunk] = []
        for (i, p) in pieces.enumerated() {
            chunks.append(SectionChunk(kind: p.0, rawLength: p.1.count, storedLength: stored[i].bytes.count,
                                       coding: stored[i].coding, crc: Deflate.crc32(stored[i].bytes)))
        }
        var w = ByteWriter()
        w.raw(h.profileHash)
        w.u32(UInt32(h.geometry.layers)); w.u32(UInt32(h.geometry.kvHeads)); w.u32(UInt32(h.geometry.headDim))
        w.u8(UInt8(RoPELayout.allCases.firstIndex(of: h.rope.layout)!)); w.f64(h.rope.theta); w.u32(UInt32(h.rope.rotaryDims))
        w.int(h.tokens); w.int(h.leadingProtected); w.int(h.trailingProtected)
        w.f64(h.nominalRatio)
        writePlan(h.keyPlan, &w)
        writePlan(h.valuePlan, &w)
        w.u8(UInt8(h.protectedEncoding.bits))
        w.int(h.firstPosition)
        w.u8(h.explicitPositions ? 1 : 0)
        w.string(h.model)
        let paperTypesOnly = (h.keyPlan.groups + h.valuePlan.groups).allSatisfy { ComponentType.paperTypes.contains($0.type) }
        let version = h.outOfWindowTokens > 0 ? 4 : h.layerAttention != nil ? 3
            : chunks.allSatisfy { $0.coding <= 1 } && paperTypesOnly && h.codeCoding == .packed ? 1 : 2
        if version >= 2 { w.u8(h.codeCoding.rawValue) }
        if let layers = h.layerAttention {
            for l in layers {
                w.u8(UInt8(RoPELayout.allCases.firstIndex(of: l.rope.layout)!)); w.f64(l.rope.theta); w.u32(UInt32(l.rope.rotaryDims))
                w.u32(UInt32(l.window ?? 0))
            }
        }
        if version >= 4, let plan = h.outOfWindowPlan {
            w.int(h.outOfWindowTokens)
            writePlan(plan.keys, &w)
            writePlan(plan.values, &w)
        }
        w.u32(UInt32(chunks.count))
        for c in chunks {
            w.u8(c.kind.rawValue); w.int(c.rawLength); w.int(c.storedLength); w.u8(c.coding); w.u32(c.crc)
        }
        var out = ByteWriter()
        out.raw(magic)
        out.u32(UInt32(version))
        out.u32(UInt32(w.bytes.count))
        out.raw(w.bytes)
        out.u32(Deflate.crc32(out.bytes))
        for s in stored { out.raw(s.bytes) }
        return (out.bytes, chunks)
    }

    /// Parses and verifies the header of a blob; returns the header, chunk table and the
    /// offset of the first chunk.
    static func parseHeader(_ bytes: [UInt8]) throws(BlobError) -> (BlobHeader, [SectionChunk], Int) {
        guard bytes.count >= 8 else { throw .truncated("\(bytes.count) bytes") }
        guard Array(bytes[0..<8]) == magic else { throw .notABlob }
        var r = ByteReader(bytes)
        do {
            _ = try r.raw(8)
            let version = Int(try r.u32())
            guard (1...formatVersion).contains(version) else { throw BlobError.unsupportedVersion(version) }
            let headerLength = Int(try r.u32())
            guard headerLength <= bytes.count - 20 else { throw BlobError.truncated("header needs \(headerLength) bytes") }
            let headerEnd = 16 + headerLength
            let crcStored = UInt32(bytes[headerEnd]) | UInt32(bytes[headerEnd + 1]) << 8 | UInt32(bytes[headerEnd + 2]) << 16 | UInt32(bytes[headerEnd + 3]) << 24
            let crc = bytes.withUnsafeBytes { Deflate.crc32(UnsafeRawBufferPointer(rebasing: $0[0..<headerEnd])) }
            guard crc == crcStored else { throw BlobError.corrupt("header checksum mismatch") }
            var h = ByteReader(bytes, range: 16..<headerEnd)
            let hash = try h.raw(32)
            let L = Int(try h.u32()), H = Int(try h.u32()), d = Int(try h.u32())
            guard L > 0, H > 0, d > 0, L * H * d < 1 << 24 else { throw BlobError.corrupt("geometry \(L)x\(H)x\(d)") }
            let li = Int(try h.u8())
            guard li < RoPELayout.allCases.count else { throw BlobError.corrupt("RoPE layout") }
            let rope = RoPE(layout: RoPELayout.allCases[li], theta: try h.f64(), rotaryDims: Int(try h.u32()))
            let limit = 1 << 26
            let tokens = try h.int(max: limit), lead = try h.int(max: limit), trail = try h.int(max: limit)
            guard lead + trail <= tokens else { throw BlobError.corrupt("token counts") }
            let ratio = try h.f64()
            guard let kp = try readPlan(&h), let vp = try readPlan(&h) else { throw BlobError.corrupt("bit plan") }
            let bits = Int(try h.u8())
            guard let protectedEncoding = ExactRowEncoding(rawValue: bits) else { throw BlobError.corrupt("protected precision \(bits)") }
            let first = try h.int(max: Int(Int32.max))
            let explicit = try h.u8() == 1
            let model = try h.string(maxLength: 1 << 16)
            var codeCoding = CodeCoding.packed
            if version >= 2 {
                guard let c = CodeCoding(rawValue: try h.u8()) else { throw BlobError.corrupt("code coding") }
                codeCoding = c
            }
            var layerAttention: [LayerAttention]?
            if version >= 3 {
                var layers: [LayerAttention] = []
                for _ in 0..<L {
                    let li = Int(try h.u8())
                    guard li < RoPELayout.allCases.count else { throw BlobError.corrupt("layer RoPE layout") }
                    let r = RoPE(layout: RoPELayout.allCases[li], theta: try h.f64(), rotaryDims: Int(try h.u32()))
                    let w = Int(try h.u32())
                    do { try r.validate(headDim: d) } catch { throw BlobError.corrupt("layer RoPE: \(error)") }
                    layers.append(LayerAttention(rope: r, window: w == 0 ? nil : w))
                }
                layerAttention = layers
            }
            var outOfWindowTokens = 0
            var outOfWindowPlan: (keys: BitPlan, values: BitPlan)?
            if version >= 4 {
                outOfWindowTokens = try h.int(max: limit)
                guard let layers = layerAttention, OutOfWindowTransforms.fullContextLayers(layers) != nil,
                      outOfWindowTokens > 0, outOfWindowTokens <= tokens - lead - trail else {
                    throw BlobError.corrupt("out-of-window rows")
                }
                guard let okp = try readPlan(&h), let ovp = try readPlan(&h) else { throw BlobError.corrupt("out-of-window bit plan") }
                outOfWindowPlan = (okp, ovp)
            }
            let nChunks = Int(try h.u32())
            guard nChunks <= bytes.count else { throw BlobError.corrupt("chunk count") }
            var chunks: [SectionChunk] = []
            for _ in 0..<nChunks {
                guard let kind = SectionKind(rawValue: try h.u8()) else { throw BlobError.corrupt("section kind") }
                let raw = try h.int(max: 1 << 40), stored = try h.int(max: 1 << 40)
                let coding = try h.u8()
                let c = try h.u32()
                guard coding <= (version == 1 ? 1 : 2) else { throw BlobError.corrupt("chunk coder \(coding)") }
                guard raw <= chunkLimit, coding != 0 || raw == stored else { throw BlobError.corrupt("chunk lengths") }
                chunks.append(SectionChunk(kind: kind, rawLength: raw, storedLength: stored, coding: coding, crc: c))
            }
            guard h.remaining == 0 else { throw BlobError.corrupt("header has trailing bytes") }
            let header = BlobHeader(profileHash: hash, geometry: KVGeometry(layers: L, kvHeads: H, headDim: d), rope: rope,
                                    layerAttention: layerAttention, tokens: tokens, leadingProtected: lead, trailingProtected: trail, nominalRatio: ratio,
                                    keyPlan: kp, valuePlan: vp, protectedEncoding: protectedEncoding, firstPosition: first,
                                    explicitPositions: explicit, model: model, codeCoding: codeCoding,
                                    outOfWindowTokens: outOfWindowTokens, outOfWindowPlan: outOfWindowPlan)
            let dataStart = headerEnd + 4
            let total = chunks.reduce(0) { $0 + $1.storedLength }
            guard total <= bytes.count - dataStart else { throw BlobError.truncated("chunks need \(total) bytes, \(bytes.count - dataStart) present") }
            guard total == bytes.count - dataStart else { throw BlobError.corrupt("\(bytes.count - dataStart - total) trailing bytes") }
            return (header, chunks, dataStart)
        } catch let e as BlobError {
            throw e
        } catch {
            throw .truncated("header ends early")
        }
    }

    /// Verifies and inflates every chunk (in parallel), returning each section's raw bytes,
    /// checking that each section has the expected length.
    static func sections(_ bytes: [UInt8], chunks: [SectionChunk], dataStart: Int,
                         expected: [SectionKind: Int]) throws(BlobError) -> [SectionKind: [UInt8]] {
        var totals: [SectionKind: Int] = [:]
        for c in chunks { totals[c.kind, default: 0] += c.rawLength }
        for kind in SectionKind.allCases {
            guard (totals[kind] ?? 0) == (expected[kind] ?? 0) else {
                throw .corrupt("section \(kind) holds \(totals[kind] ?? 0) bytes, expected \(expected[kind] ?? 0)")
            }
        }
        var starts: [Int] = []
        var o = dataStart
        for c in chunks { starts.append(o); o += c.storedLength }
        var out: [[UInt8]] = [[UInt8]](repeating: [], count: chunks.count)
        let failure = Locked<(chunk: Int, inflated: Bool)?>(nil)
        out.withUnsafeMutableBufferPointer { dst in
            let box = UncheckedSendable(dst.baseAddress!)
            bytes.withUnsafeBytes { raw in
                let rawBox = UncheckedSendable(raw)
                Parallel.forEach(chunks.count) { i in
                    let c = chunks[i]
                    let stored = UnsafeRawBufferPointer(rebasing: rawBox.value[starts[i]..<(starts[i] + c.storedLength)])
                    guard Deflate.crc32(stored) == c.crc else { failure.withLock { $0 = $0 ?? (i, false) }; return }
                    if c.coding != 0 {
                        var buf = [UInt8](repeating: 0, count: c.rawLength)
                        let ok = buf.withUnsafeMutableBytes { LosslessCoder.decode(identifier: c.coding, stored, into: $0) }
                        guard ok else { failure.withLock { $0 = $0 ?? (i, true) }; return }
                        box.value[i] = buf
                    } else {
                        box.value[i] = Array(stored)
                    }
                }
            }
        }
        if let f = failure.current {
            throw .corrupt(f.inflated ? "chunk \(f.chunk) does not decode to its length" : "checksum mismatch in chunk \(f.chunk)")
        }
        var result: [SectionKind: [UInt8]] = [:]
        for (i, c) in chunks.enumerated() { result[c.kind, default: []].append(contentsOf: out[i]) }
        return result
    }
}

/// A summary of a blob's header, readable without its profile.
public struct BlobSummary: Codable, Sendable {
    public var formatVersion: Int
    public var profileHash: String
    public var geometry: KVGeometry
    public var rope: RoPE
    /// Every layer's rotation and window, when they differ (version 3).
    public var layerAttention: [LayerAttention]?
    public var tokens: Int
    /// Compressed tokens no sliding window can see any more, stored for the full-context
    /// layers only (version 4).
    public var outOfWindowTokens: Int
    public var leadingExactTokens: Int
    public var trailingExactTokens: Int
    public var nominalRatio: Double
    public var keyPlan: String
    public var valuePlan: String
    public var keyBitsPerToken: Int
    public var valueBitsPerToken: Int
    public var exactTokenPrecisionBits: Int
    public var model: String
    public var chunks: Int
    public var rawBytesBySection: [String: Int]
    public var storedBytesBySection: [String: Int]
    /// How the chunks are stored: `stored`, `deflate`, `zstd`.
    public var coders: [String]
    /// How the codes are stored: `packed` or `rans`.
    public var codeCoding: String
    public var totalBytes: Int
}

extension Blob {
    /// Reads and verifies a blob's header (not its chunks).
    public static func summary(of bytes: [UInt8]) throws(BlobError) -> BlobSummary {
        let (h, chunks, _) = try parseHeader(bytes)
        var raw: [String: Int] = [:], stored: [String: Int] = [:]
        for c in chunks {
            raw["\(c.kind)", default: 0] += c.rawLength
            stored["\(c.kind)", default: 0] += c.storedLength
        }
        let version = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
        let coders = Set(chunks.map(\.coding)).sorted().map { $0 == 0 ? "stored" : $0 == 1 ? "deflate" : "zstd" }
        return BlobSummary(formatVersion: version, profileHash: hexString(h.profileHash),
                           geometry: h.geometry, rope: h.rope, layerAttention: h.layerAttention, tokens: h.tokens,
                           outOfWindowTokens: h.outOfWindowTokens,
                           leadingExactTokens: h.leadingProtected,
                           trailingExactTokens: h.trailingProtected, nominalRatio: h.nominalRatio,
                           keyPlan: h.keyPlan.description, valuePlan: h.valuePlan.description,
                           keyBitsPerToken: h.keyPlan.bitsPerToken, valueBitsPerToken: h.valuePlan.bitsPerToken,
                           exactTokenPrecisionBits: h.protectedEncoding.bits, model: h.model, chunks: chunks.count,
                           rawBytesBySection: raw, storedBytesBySection: stored, coders: coders,
                           codeCoding: h.codeCoding.description, totalBytes: bytes.count)
    }

    /// Whether `bytes` start like a blob.
    public static func isBlob(_ bytes: [UInt8]) -> Bool { bytes.count >= 8 && Array(bytes[0..<8]) == magic }
}

extension Profile {
    /// Whether `bytes` start like a profile.
    public static func isProfile(_ bytes: [UInt8]) -> Bool { bytes.count >= 8 && Array(bytes[0..<8]) == magic }
}
