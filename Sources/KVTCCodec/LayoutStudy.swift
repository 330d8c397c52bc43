import Foundation
import KVTCNumerics

/// Measures the byte layouts and lossless coders one could use for a blob's codes, to
/// justify what KVTC writes (group-major codes, byte-split shifts and scales, the default
/// coder). Used by `kvtc bench codec --layouts`.
public enum LayoutStudy {
    /// One alternative and its entropy-coded size (code and metadata sections only).
    public struct Row: Sendable, Codable {
        public var layout: String
        /// The lossless coder (`none` for the raw sections).
        public var coder: String
        public var bytes: Int
        /// Time to code the sections (one thread per chunk, as blobs are made).
        public var seconds: Double
        /// Time to decode them again.
        public var decodeSeconds: Double
    }

    /// The coders the study tries on the default layout; other layouts get DEFLATE-6.
    public static let coders: [LosslessCoder] = [.deflate(level: 1), .deflate(level: 6), .deflate(level: 9), .deflate(level: 12),
                                                 .zstd(level: 1), .zstd(level: 3), .zstd(level: 9), .zstd(level: 19)]

    /// Re-encodes the code and metadata sections of `blob` (made by `compressor`) in each
    /// alternative layout and with each lossless coder.
    public static func run(blob: [UInt8], compressor: KVTCCompressor) throws(KVTCError) -> [Row] {
        let (h, kc, vc, s) = try openSections(blob)
        let n = h.compressedTokens
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
            // Chunks as blobs cut them.
            let pieces = sections.flatMap { sec in
                stride(from: 0, to: sec.count, by: Blob.chunkLimit).map { Array(sec[$0..<min(sec.count, $0 + Blob.chunkLimit)]) }
            }
            for coder in name.hasSuffix("(default)") ? coders : [.deflate(level: 6)] {
                var coded = [[UInt8]?](repeating: nil, count: pieces.count)
                let sw = Stopwatch()
                coded.withUnsafeMutableBufferPointer { out in
                    let box = UncheckedSendable(out.baseAddress!)
                    Parallel.forEach(pieces.count) { i in box.value[i] = pieces[i].withUnsafeBytes { coder.encode($0) } }
                }
                let codeSeconds = sw.elapsed
                let decode = Stopwatch()
                Parallel.forEach(pieces.count) { i in
                    guard let c = coded[i] else { return }
                    var buf = [UInt8](repeating: 0, count: pieces[i].count)
                    let ok = c.withUnsafeBytes { src in buf.withUnsafeMutableBytes { LosslessCoder.decode(identifier: coder.identifier, src, into: $0) } }
                    precondition(ok && buf == pieces[i], "\(coder) does not round-trip")
                }
                let total = zip(pieces, coded).reduce(0) { $0 + min($1.0.count, $1.1?.count ?? $1.0.count) }
                rows.append(Row(layout: name, coder: coder.description, bytes: total, seconds: codeSeconds, decodeSeconds: decode.elapsed))
            }
        }
        // rANS per group plane for the codes (the default), DEFLATE-1 for shifts and scales.
        let sw = Stopwatch()
        let ransCodes = [kc.ransSection(packed: s[.keyCodes]!), vc.ransSection(packed: s[.valueCodes]!)]
        let ransSeconds = sw.elapsed
        let decode = Stopwatch()
        _ = try? kc.codePlanes(rans: ransCodes[0])
        _ = try? vc.codePlanes(rans: ransCodes[1])
        let ransDecode = decode.elapsed
        let meta = [s[.keyMeta]!, s[.valueMeta]!].reduce(0) { total, sec in
            total + stride(from: 0, to: sec.count, by: Blob.chunkLimit).reduce(0) { t, o in
                let part = Array(sec[o..<min(sec.count, o + Blob.chunkLimit)])
                return t + min(part.count, part.withUnsafeBytes { LosslessCoder.deflate(level: 1).encode($0)?.count } ?? part.count)
            }
        }
        rows.append(Row(layout: "rANS per group plane, DEFLATE-1 metadata", coder: "rans", bytes: ransCodes.reduce(0) { $0 + $1.count } + meta,
                        seconds: ransSeconds, decodeSeconds: ransDecode))
        rows.append(Row(layout: "no entropy coding", coder: "none", bytes: groupMajor.reduce(0) { $0 + $1.count }, seconds: 0, decodeSeconds: 0))
        return rows
    }

    /// Ideal (empirical) entropies of a blob's code planes under simple context models, in
    /// bytes: what an adaptive coder with that context could at best reach, not counting its
    /// model's cost (small here: at most 2^bits contexts of 2^bits counts per group plane).
    public struct CodeEntropy: Sendable {
        /// The planes packed, no entropy coding.
        public var packedBytes: Double
        /// Order 0 per group plane (what the default rANS coder models).
        public var perGroup: Double
        /// Order 0 per component (one distribution per stored component).
        public var perComponent: Double
        /// Given the same component's code in the previous token.
        public var givenPreviousToken: Double
        /// Given the previous component's code in the same token (same group).
        public var givenPreviousComponent: Double
    }

    /// Entropies of the code planes of `blob` (made by `compressor`) per context model.
    public static func codeEntropy(blob: [UInt8], compressor: KVTCCompressor) throws(KVTCError) -> CodeEntropy {
        let (h, kc, vc, s) = try openSections(blob)
        let n = h.compressedTokens
        var result = CodeEntropy(packedBytes: 0, perGroup: 0, perComponent: 0, givenPreviousToken: 0, givenPreviousComponent: 0)
        /// Bits to code `symbols` with one empirical distribution per context.
        func bits(_ pairs: [(context: Int, symbol: Int)], contexts: Int, alphabet: Int) -> Double {
            var counts = [Int](repeating: 0, count: contexts * alphabet)
            var totals = [Int](repeating: 0, count: contexts)
            for (c, x) in pairs { counts[c * alphabet + x] += 1; totals[c] += 1 }
            var sum = 0.0
            for (i, k) in counts.enumerated() where k > 0 { sum -= Double(k) * log2(Double(k) / Double(totals[i / alphabet])) }
            return sum
        }
        for (kind, coder) in [(SectionKind.keyCodes, kc), (.valueCodes, vc)] {
            let packed = s[kind] ?? []
            result.packedBytes += Double(coder.codeBytes)
            for (gi, g) in coder.plan.groups.enumerated() {
                let bitsPerCode = g.type.bits, alphabet = 1 << bitsPerCode
                var codes = [Int](repeating: 0, count: n * g.size)
                packed.withUnsafeBufferPointer { b in
                    for i in codes.indices { codes[i] = Int(CodePacker.load(at: i, bits: bitsPerCode, from: b.baseAddress! + coder.codeOffsets[gi])) }
                }
                result.perGroup += bits(codes.map { (0, $0) }, contexts: 1, alphabet: alphabet) / 8
                result.perComponent += bits(codes.indices.map { ($0 % g.size, codes[$0]) }, contexts: g.size, alphabet: alphabet) / 8
                result.givenPreviousToken += bits(codes.indices.map { i in
                    (i >= g.size ? codes[i - g.size] : 0, codes[i])
                }, contexts: alphabet, alphabet: alphabet) / 8
                result.givenPreviousComponent += bits(codes.indices.map { i in
                    (i % g.size > 0 ? codes[i - 1] : 0, codes[i])
                }, contexts: alphabet, alphabet: alphabet) / 8
            }
        }
        return result
    }

    /// The header, stream coders and sections of a blob without out-of-window rows, with
    /// rANS-coded code sections turned back into packed planes.
    private static func openSections(_ blob: [UInt8]) throws(KVTCError)
        -> (BlobHeader, StreamCoder, StreamCoder, [SectionKind: [UInt8]]) {
        let parsed: (BlobHeader, [SectionChunk], Int)
        do { parsed = try Blob.parseHeader(blob) } catch { throw .blob(error) }
        let (h, chunks, start) = parsed
        guard h.outOfWindowTokens == 0 else {
            throw .blob(.corrupt("the layout study takes blobs without out-of-window rows (compress with trimsWindows off)"))
        }
        let n = h.compressedTokens
        let kc = StreamCoder(plan: h.keyPlan, tokens: n), vc = StreamCoder(plan: h.valuePlan, tokens: n)
        let raw = { (kind: SectionKind) in chunks.filter { $0.kind == kind }.reduce(0) { $0 + $1.rawLength } }
        let expected: [SectionKind: Int] = [
            .keyCodes: h.codeCoding == .rans ? raw(.keyCodes) : kc.codeBytes, .keyMeta: kc.metaBytes,
            .valueCodes: h.codeCoding == .rans ? raw(.valueCodes) : vc.codeBytes, .valueMeta: vc.metaBytes,
            .protectedKeys: raw(.protectedKeys), .protectedValues: raw(.protectedValues), .positions: raw(.positions),
        ]
        var s: [SectionKind: [UInt8]]
        do { s = try Blob.sections(blob, chunks: chunks, dataStart: start, expected: expected) } catch { throw .blob(error) }
        if h.codeCoding == .rans {
            for (kind, coder) in [(SectionKind.keyCodes, kc), (.valueCodes, vc)] {
                do { s[kind] = coder.packedSection(planes: try coder.codePlanes(rans: s[kind] ?? [])) } catch { throw .blob(.corrupt(error.reason)) }
            }
        }
        return (h, kc, vc, s)
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
