import KVTCNumerics

/// Measures the byte layouts and DEFLATE levels one could use for a blob's codes, to
/// justify the layout KVTC writes (group-major codes, byte-split shifts and scales,
/// level 1). Used by `kvtc bench codec --layouts`.
public enum LayoutStudy {
    /// One alternative and its entropy-coded size (code and metadata sections only).
    public struct Row: Sendable, Codable {
        public var layout: String
        public var level: Int
        public var bytes: Int
        public var seconds: Double
    }

    /// Re-encodes the code and metadata sections of `blob` (made by `compressor`) in each
    /// alternative layout and DEFLATE level.
    public static func run(blob: [UInt8], compressor: KVTCCompressor) throws(KVTCError) -> [Row] {
        let parsed: (BlobHeader, [SectionChunk], Int)
        do { parsed = try Blob.parseHeader(blob) } catch { throw .blob(error) }
        let (h, chunks, start) = parsed
        let n = h.compressedTokens
        let kc = StreamCoder(plan: h.keyPlan, tokens: n), vc = StreamCoder(plan: h.valuePlan, tokens: n)
        let expected: [SectionKind: Int] = [
            .keyCodes: kc.codeBytes, .keyMeta: kc.metaBytes, .valueCodes: vc.codeBytes, .valueMeta: vc.metaBytes,
            .protectedKeys: chunks.filter { $0.kind == .protectedKeys }.reduce(0) { $0 + $1.rawLength },
            .protectedValues: chunks.filter { $0.kind == .protectedValues }.reduce(0) { $0 + $1.rawLength },
            .positions: chunks.filter { $0.kind == .positions }.reduce(0) { $0 + $1.rawLength },
        ]
        let s: [SectionKind: [UInt8]]
        do { s = try Blob.sections(blob, chunks: chunks, dataStart: start, expected: expected) } catch { throw .blob(error) }
        var layouts: [(String, [[UInt8]])] = []
        let groupMajor = [s[.keyCodes]!, s[.keyMeta]!, s[.valueCodes]!, s[.valueMeta]!]
        layouts.append(("group-major codes, byte-split metadata (default)", groupMajor))
        layouts.append(("group-major codes, interleaved metadata",
                        [s[.keyCodes]!, interleaveMeta(s[.keyMeta]!, groups: h.keyPlan.groups.count, tokens: n),
                         s[.valueCodes]!, interleaveMeta(s[.valueMeta]!, groups: h.valuePlan.groups.count, tokens: n)]))
        layouts.append(("token-major codes, byte-split metadata",
                        [tokenMajor(s[.keyCodes]!, coder: kc), s[.keyMeta]!, tokenMajor(s[.valueCodes]!, coder: vc), s[.valueMeta]!]))
        var rows: [Row] = []
        for (name, sections) in layouts {
            for level in name.hasSuffix("(default)") ? [1, 6, 9, 12] : [6] {
                let sw = Stopwatch()
                var total = 0
                for sec in sections {
                    var o = 0
                    while o < sec.count {
                        let e = min(sec.count, o + Blob.chunkLimit)
                        let part = Array(sec[o..<e])
                        total += min(part.count, (try? Deflate.compress(part, level: level).count) ?? part.count)
                        o = e
                    }
                }
                rows.append(Row(layout: name, level: level, bytes: total, seconds: sw.elapsed))
            }
        }
        rows.append(Row(layout: "no entropy coding", level: 0, bytes: groupMajor.reduce(0) { $0 + $1.count }, seconds: 0))
        return rows
    }

    private static func interleaveMeta(_ m: [UInt8], groups: Int, tokens n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: m.count)
        for g in 0..<groups {
            let b = g * n * 4
            for t in 0..<n { for k in 0..<4 { out[b + t * 4 + k] = m[b + k * n + t] } }
        }
        return out
    }

    private static func tokenMajor(_ codes: [UInt8], coder: StreamCoder) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: coder.codeBytes + 8)
        var bit = 0
        for t in 0..<coder.tokens {
            for (gi, g) in coder.plan.groups.enumerated() {
                let bits = g.type.bits
                let plane = coder.codeOffsets[gi]
                for i in 0..<g.size {
                    let src = (t * g.size + i) * bits
                    let q = (codes[plane + src >> 3] >> UInt8(src & 7)) & UInt8(g.type.maxCode)
                    out[bit >> 3] |= q << UInt8(bit & 7)
                    bit += bits
                }
            }
        }
        return Array(out.prefix((bit + 7) / 8))
    }
}
