import Foundation
import KVTCCache
import KVTCNumerics

/// Errors compressing or decompressing with KVTC.
public enum KVTCError: Error, Equatable, CustomStringConvertible {
    /// The blob is unreadable.
    case blob(BlobError)
    /// The profile does not fit the cache or blob.
    case profile(ProfileError)
    /// The cache is invalid (shape, NaN/Inf).
    case cache(KVCacheError)
    /// Every token of the cache is protected; there is nothing to compress.
    case nothingToCompress(tokens: Int, protected: Int)

    public var description: String {
        switch self {
        case .blob(let e): return e.description
        case .profile(let e): return e.description
        case .cache(let e): return e.description
        case .nothingToCompress(let t, let p):
            return "the cache has \(t) tokens and \(p) of them are protected: nothing to compress"
        }
    }
}

/// Precomputed matrices for one stream of one profile.
final class StreamTables: Sendable {
    /// `rank x p`: basis rows multiplied by the feature scale (projection).
    let encode: [Float]
    /// `rank`: mean projected onto the basis (subtracted after projection).
    let offset: [Float]
    /// `rank x p`: basis rows divided by the feature scale (reconstruction).
    let decode: [Float]
    /// `p`: mean divided by the feature scale (added after reconstruction).
    let mean: [Float]
    let rank: Int
    let dimension: Int
    /// ``encode`` and ``decode`` in bfloat16 for the oneDNN backend (`nil`: OpenBLAS f32).
    let bf16: (encode: BF16Matrix, decode: BF16Matrix)?
    /// ``decode`` in bfloat16 packed for whole-row reconstruction (the restore's product:
    /// measured ~1.09 TFLOP/s at 256 rows against 0.85 from the row-major copy, which
    /// layer-wise decoding's column blocks still use).
    let packedDecode: BF16Weights?
    /// ``decode`` as 8-bit integers for whole-row reconstruction with
    /// ``ReconstructionArithmetic/int8``: component `k`'s row multiplied by
    /// `sqrt(sigma_k)` (its coefficients' standard deviation at calibration, to the power
    /// ``int8Balance``), then quantized per feature; coefficients are multiplied by
    /// `coefficientFactors` (`sigma_k^-balance`) before they are quantized per token.
    let int8Decode: (weights: Int8Weights, coefficientFactors: [Float])?

    /// How the spread of the components is shared between the coefficients and the basis
    /// before both are quantized to 8 bits: 0 leaves the coefficients as they are (the later,
    /// smaller ones then lose most of their bits to the leading ones in each token's scale),
    /// 1 makes every component's coefficients unit-variance (and the basis's later rows lose
    /// theirs instead). Measured on a real 4,096-token cache (`kvtc bench codec --cache`),
    /// decoded values against the f32 path: see ``KVTCCompressor/reconstruction``.
    static let int8Balance: Float = 0.5

    /// Tables for the components `plan` uses; 8-bit integer reconstruction only where
    /// `reconstruction` asks for it and the plan's codes average fewer than
    /// ``ReconstructionArithmetic/int8MaximumMeanBits``.
    init(_ t: StreamTransform, plan: BitPlan, backend: GEMMBackend = .openblas,
         reconstruction: ReconstructionArithmetic = .bf16) {
        let rank = plan.componentsUsed
        let p = t.basis.dimension
        let b = Array(t.basis.components.elements[0..<(rank * p)])
        var enc = b, dec = b, mean = t.basis.mean
        if let s = t.featureScale {
            for r in 0..<rank { for i in 0..<p { enc[r * p + i] *= s[i]; dec[r * p + i] /= s[i] } }
            for i in 0..<p { mean[i] /= s[i] }
        }
        var off = [Float](repeating: 0, count: rank)
        for r in 0..<rank {
            var acc: Double = 0
            for i in 0..<p { acc += Double(b[r * p + i]) * Double(t.basis.mean[i]) }
            off[r] = Float(acc)
        }
        encode = enc
        offset = off
        decode = dec
        self.mean = mean
        self.rank = rank
        self.dimension = p
        // Where oneDNN has no bfloat16 matmul (below AVX-512) the tables stay f32 and
        // OpenBLAS multiplies.
        bf16 = backend == .onednn && rank > 0 && OneDNN.canMultiplyBF16
            ? try? (BF16Matrix(enc, rows: rank, columns: p), BF16Matrix(dec, rows: rank, columns: p)) : nil
        if backend == .onednn, reconstruction == .int8, rank > 0, OneDNN.hasInt8Unit,
           plan.meanCodeBits < ReconstructionArithmetic.int8MaximumMeanBits {
            let sigma = (0..<rank).map { Float(max(t.basis.variances[$0], 1e-30)).squareRoot() }
            let grow = sigma.map { pow($0, Self.int8Balance) }
            var weighted = dec
            for r in 0..<rank { for i in 0..<p { weighted[r * p + i] *= grow[r] } }
            // A basis or variance that is not finite (a damaged profile) keeps bfloat16,
            // whose products carry the NaN on to the finiteness checks.
            int8Decode = (try? Int8Weights(weighted, inFeatures: rank, outFeatures: p)).map { ($0, grow.map { 1 / $0 }) }
        } else {
            int8Decode = nil
        }
        // The packed bfloat16 copy serves whole rows wherever int8 does not.
        packedDecode = bf16 == nil || int8Decode != nil ? nil
            : try? BF16Weights(transposed: dec, outFeatures: p, inFeatures: rank)
    }

    /// `y (count x rank) = x (count x dimension, row stride lda) * encode^T`.
    func project(_ x: UnsafePointer<Float>, count: Int, lda: Int, into y: UnsafeMutablePointer<Float>) {
        guard count > 0, rank > 0 else { return }
        if let b = bf16 {
            do { try b.encode.multiply(x, rows: count, lda: lda, transposed: true, into: y, ldc: rank); return } catch {}
        }
        encode.withUnsafeBufferPointer { e in
            BLAS.gemm(.normal, .transposed, m: count, n: rank, k: dimension, a: x, lda: lda,
                      b: e.baseAddress!, ldb: dimension, c: y, ldc: rank)
        }
    }

    /// `c (count x columns.count, row stride ldc) = y (count x rank) * decode[:, columns] + mean[columns]`.
    func reconstruct(_ y: UnsafePointer<Float>, count: Int, columns: Range<Int>, into c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard count > 0 else { return }
        if columns == 0..<dimension, ldc == dimension, let (weights, factors) = int8Decode {
            let q = UnsafeMutablePointer<Int8>.allocate(capacity: count * rank)
            let rowScales = UnsafeMutablePointer<Float>.allocate(capacity: count)
            defer { q.deallocate(); rowScales.deallocate() }
            Int8Weights.quantizeRows(y, rows: count, columns: rank, columnFactors: factors, into: q, rowScales: rowScales)
            if (try? weights.apply(q, rows: count, into: c, ldy: ldc)) != nil {
                // Integer sums times each token's and each feature's scale, plus the mean.
                let box = UncheckedSendable(c), rs = UncheckedSendable(rowScales)
                weights.columnScales.withUnsafeBufferPointer { cs in
                    mean.withUnsafeBufferPointer { m in
                        let csb = UncheckedSendable(cs.baseAddress!), mb = UncheckedSendable(m.baseAddress!)
                        let width = dimension
                        Parallel.forEachRange(count, minimumPerTask: 64) { r in
                            for t in r {
                                let row = box.value + t * ldc
                                let s = rs.value[t]
                                for i in 0..<width { row[i] = row[i] * (s * csb.value[i]) + mb.value[i] }
                            }
                        }
                    }
                }
                return
            }
        }
        defer { addMean(columns: columns, rows: count, into: c, ldc: ldc) }
        if let packed = packedDecode, columns == 0..<dimension, ldc == dimension {
            do { try packed.apply(y, rows: count, into: c, accumulate: false); return } catch {}
        }
        if let b = bf16 {
            do { try b.decode.multiply(y, rows: count, lda: rank, transposed: false, columns: columns, into: c, ldc: ldc); return } catch {}
        }
        if rank == 0 {
            for t in 0..<count { (c + t * ldc).update(repeating: 0, count: columns.count) }
            return
        }
        decode.withUnsafeBufferPointer { b in
            BLAS.gemm(m: count, n: columns.count, k: rank, a: y, lda: max(1, rank),
                      b: b.baseAddress! + columns.lowerBound, ldb: dimension, c: c, ldc: ldc)
        }
    }

    /// `c[t, :] += mean[columns]` for `rows` rows `ldc` apart.
    private func addMean(columns: Range<Int>, rows: Int, into c: UnsafeMutablePointer<Float>, ldc: Int) {
        let box = UncheckedSendable(c)
        let width = columns.count
        mean.withUnsafeBufferPointer { m in
            let mb = UncheckedSendable(m.baseAddress! + columns.lowerBound)
            Parallel.forEachRange(rows, minimumPerTask: 256) { r in
                for t in r {
                    let row = box.value + t * ldc
                    for i in 0..<width { row[i] += mb.value[i] }
                }
            }
        }
    }
}

/// KV cache transform coding with one profile at one nominal ratio.
///
/// Tokens at positions below ``Protection/sinkTokens`` at the start of the cache and the
/// last ``Protection/recentTokens`` tokens are stored exactly; the rest are projected on
/// the profile's PCA basis, quantized per token and group as the ratio's ``BitPlan`` says,
/// packed and DEFLATE-coded.
public struct KVTCCompressor: CacheCompressor {
    public let profile: Profile
    public let plan: RatioPlan
    /// Which tokens stay exact (defaults to the profile's).
    public var protection: Protection
    /// The lossless coder of the blob's chunks.
    public var coder: LosslessCoder
    /// How the codes are stored (``CodeCoding/rans`` by default: see README).
    public var codeCoding: CodeCoding = KVTCCompressor.defaultCodeCoding

    /// rANS per group plane: on real caches it codes the 3- and 6-bit planes DEFLATE cannot
    /// model to their order-0 entropy (README).
    public static let defaultCodeCoding = CodeCoding.rans

    /// DEFLATE level 1: on real caches of the embedded model it is both the fastest and
    /// smaller than levels 6 and 9, and than Zstandard at every level tried
    /// (`kvtc bench codec --layouts`; README).
    public static let defaultCoder = LosslessCoder.deflate(level: 1)

    /// Whether tokens that every sliding window has passed keep only the full-context
    /// layers (when the profile has ``Profile/outOfWindow`` transforms). On by default; a
    /// blob made so restores a cache that continues exactly from its end, but not from an
    /// earlier position (its sliding layers lack the rows an earlier query would see).
    public var trimsWindows = true

    let keyTables: StreamTables
    let valueTables: StreamTables
    /// Tables of the out-of-window transforms at this ratio's plan.
    let outOfWindowTables: (keys: StreamTables, values: StreamTables)?

    /// Name reported for this compressor (variants such as ablations rename it).
    public var methodName = "kvtc"

    public var method: String { methodName }
    public var setting: String { Profile.formatRatio(plan.ratio) }

    /// Which library multiplies the projection and reconstruction matrices.
    public let backend: GEMMBackend
    /// The arithmetic of whole-cache reconstruction with the oneDNN backend.
    public let reconstruction: ReconstructionArithmetic
    /// Whether whole-cache reconstruction of this ratio's keys and values runs in 8-bit
    /// integers (``ReconstructionArithmetic/int8`` asked for, VNNI present, and few enough
    /// bits per component).
    public var reconstructsInInt8: (keys: Bool, values: Bool) { (keyTables.int8Decode != nil, valueTables.int8Decode != nil) }

    /// A compressor for `profile` at `ratio`; `backend` defaults to
    /// ``GEMMBackend/preferred`` (oneDNN's bfloat16 products where the CPU has the unit) and
    /// `reconstruction` to ``ReconstructionArithmetic/preferred`` (8-bit integers on VNNI).
    public init(profile: Profile, ratio: Double, protection: Protection? = nil, coder: LosslessCoder = KVTCCompressor.defaultCoder,
                backend: GEMMBackend = .preferred,
                reconstruction: ReconstructionArithmetic = .preferred) throws(KVTCError) {
        self.backend = backend
        self.reconstruction = reconstruction
        self.profile = profile
        do { self.plan = try profile.plan(ratio: ratio) } catch { throw .profile(error) }
        self.protection = protection ?? profile.protection
        self.coder = coder
        keyTables = StreamTables(profile.keys, plan: plan.keys, backend: backend,
                                 reconstruction: reconstruction)
        valueTables = StreamTables(profile.values, plan: plan.values, backend: backend,
                                   reconstruction: reconstruction)
        if let w = profile.outOfWindow, let o = plan.outOfWindow {
            outOfWindowTables = (StreamTables(w.keys, plan: o.keys, backend: backend, reconstruction: reconstruction),
                                 StreamTables(w.values, plan: o.values, backend: backend, reconstruction: reconstruction))
        } else {
            outOfWindowTables = nil
        }
    }

    public func compress(_ cache: KVCache) throws(KVTCError) -> CompressedCache {
        assemble(try quantize(cache))
    }

    /// A cache's compressed tokens projected and quantized: everything a blob holds before
    /// the code coding and the lossless coder. The projection is an sgemm whose rounding
    /// follows OpenBLAS's thread count, so two quantizations of one cache may differ by one
    /// step at a rounding boundary; one quantization assembles to the same values whatever
    /// the coders.
    struct QuantizedCache {
        typealias Stream = (coder: StreamCoder, codes: [UInt8], meta: [UInt8])
        let cache: KVCache
        let leading: Int
        let trailing: Int
        /// Packed codes and per-token group metadata of the full rows' keys, then values.
        let streams: [Stream]
        /// The leading compressed tokens stored for the full-context layers only, and their
        /// keys' and values' codes.
        let outOfWindowTokens: Int
        let outOfWindowStreams: [Stream]
    }

    /// How many of the compressed tokens `range` no sliding window can see any more: those
    /// before every sliding layer's ``KVCache/laterQueryReach``.
    func outOfWindowCount(_ cache: KVCache, compressed range: Range<Int>) -> Int {
        let reach = cache.laterQueryReach, attention = cache.layerAttention
        guard trimsWindows, outOfWindowTables != nil,
              let limit = reach.indices.filter({ attention[$0].window != nil }).map({ reach[$0] }).min() else { return 0 }
        var m = 0
        while m < range.count, cache.positions[range.lowerBound + m] < limit { m += 1 }
        return m
    }

    /// Projects `count` rows (`stride` apart) on `tables` and quantizes them with `plan`.
    private static func quantizeRows(_ x: UnsafePointer<Float>, count: Int, stride: Int, tables: StreamTables,
                                     plan: BitPlan) -> QuantizedCache.Stream {
        let coder = StreamCoder(plan: plan, tokens: count)
        var coefficients = [Float](repeating: 0, count: count * tables.rank)
        if count > 0 {
            coefficients.withUnsafeMutableBufferPointer { y in
                tables.project(x, count: count, lda: stride, into: y.baseAddress!)
            }
        }
        var codes = [UInt8](repeating: 0, count: coder.codeBytes)
        var meta = [UInt8](repeating: 0, count: coder.metaBytes)
        coefficients.withUnsafeBufferPointer { y in
            tables.offset.withUnsafeBufferPointer { off in
                codes.withUnsafeMutableBufferPointer { c in
                    meta.withUnsafeMutableBufferPointer { m in
                        coder.encode(rows: y.baseAddress!, stride: tables.rank, subtract: off.baseAddress,
                                     codes: c.baseAddress!, meta: m.baseAddress!)
                    }
                }
            }
        }
        return (coder, codes, meta)
    }

    func quantize(_ cache: KVCache) throws(KVTCError) -> QuantizedCache {
        do { try profile.check(cache) } catch { throw .profile(error) }
        do { try cache.validateFinite() } catch { throw .cache(error) }
        let (lead, trail) = protection.exactTokens(of: cache)
        let n = cache.tokenCount - lead - trail
        guard n > 0 else { throw .nothingToCompress(tokens: cache.tokenCount, protected: lead + trail) }
        let p = cache.geometry.featuresPerToken
        let range = lead..<(lead + n)
        let m = outOfWindowCount(cache, compressed: range)
        var streams: [QuantizedCache.Stream] = [], windowStreams: [QuantizedCache.Stream] = []
        for isKeys in [true, false] {
            // Rows of the compressed tokens: keys un-rotated, values as they are.
            var unrotated: [Float] = []
            if isKeys {
                unrotated = [Float](repeating: 0, count: n * p)
                unrotated.withUnsafeMutableBufferPointer { FeatureRows.unrotatedKeys(of: cache, tokens: range, into: $0.baseAddress!) }
            }
            let stream = isKeys ? unrotated : cache.values
            let first = isKeys ? 0 : lead
            stream.withUnsafeBufferPointer { x in
                let rows = x.baseAddress! + first * p
                streams.append(Self.quantizeRows(rows + m * p, count: n - m, stride: p, tables: isKeys ? keyTables : valueTables,
                                                 plan: isKeys ? plan.keys : plan.values))
                if m > 0, let w = profile.outOfWindow, let tables = outOfWindowTables, let o = plan.outOfWindow {
                    // The full-context layers' features of the out-of-window rows, side by side.
                    let f = cache.geometry.featuresPerLayer, pw = w.layers.count * f
                    let sub = FeatureRows.selecting(layers: w.layers, featuresPerLayer: f, of: rows, count: m, stride: p)
                    sub.withUnsafeBufferPointer {
                        windowStreams.append(Self.quantizeRows($0.baseAddress!, count: m, stride: pw,
                                                               tables: isKeys ? tables.keys : tables.values,
                                                               plan: isKeys ? o.keys : o.values))
                    }
                }
            }
        }
        return QuantizedCache(cache: cache, leading: lead, trailing: trail, streams: streams,
                              outOfWindowTokens: m, outOfWindowStreams: windowStreams)
    }

    /// The blob of a quantized cache, with this compressor's code coding and lossless coder.
    func assemble(_ q: QuantizedCache) -> CompressedCache {
        let cache = q.cache, lead = q.leading, trail = q.trailing
        let n = cache.tokenCount - lead - trail
        let p = cache.geometry.featuresPerToken
        var sections: [(SectionKind, [UInt8], Bool)] = []
        var rawCompressedBytes = 0
        let kinds: [(SectionKind, SectionKind)] = [(.keyCodes, .keyMeta), (.valueCodes, .valueMeta),
                                                   (.outOfWindowKeyCodes, .outOfWindowKeyMeta),
                                                   (.outOfWindowValueCodes, .outOfWindowValueMeta)]
        for ((codesKind, metaKind), stream) in zip(kinds, q.streams + q.outOfWindowStreams) {
            rawCompressedBytes += stream.codes.count + stream.meta.count
            if codeCoding == .rans {
                sections.append((codesKind, stream.coder.ransSection(packed: stream.codes), false))
            } else {
                sections.append((codesKind, stream.codes, true))
            }
            sections.append((metaKind, stream.meta, true))
        }

        // Protected tokens: fp16 when every value is exactly representable, else f32.
        let protectedRanges = [0..<(lead * p), ((cache.tokenCount - trail) * p)..<(cache.tokenCount * p)]
        let exact = ExactRowEncoding.lossless(protectedRanges.flatMap { [cache.keys[$0], cache.values[$0]] })
        for (kind, stream) in [(SectionKind.protectedKeys, cache.keys), (.protectedValues, cache.values)] {
            var w = ByteWriter(capacity: exact.byteCount(values: (lead + trail) * p))
            for r in protectedRanges { exact.append(stream[r], to: &w) }
            sections.append((kind, w.bytes, true))
        }
        let first = cache.positions.first ?? 0
        let contiguous = cache.firstNonConsecutivePosition == nil
        if !contiguous {
            var w = ByteWriter()
            for v in cache.positions { w.int(v) }
            sections.append((.positions, w.bytes, true))
        }
        let header = BlobHeader(profileHash: profile.hashBytes, geometry: cache.geometry, rope: cache.rope,
                                layerAttention: cache.isUniform ? nil : cache.layerAttention, tokens: cache.tokenCount, leadingProtected: lead, trailingProtected: trail,
                                nominalRatio: plan.ratio, keyPlan: plan.keys, valuePlan: plan.values,
                                protectedEncoding: exact, firstPosition: first,
                                explicitPositions: !contiguous, model: cache.model, codeCoding: codeCoding,
                                outOfWindowTokens: q.outOfWindowTokens,
                                outOfWindowPlan: q.outOfWindowTokens > 0 ? plan.outOfWindow.map { ($0.keys, $0.values) } : nil)
        let (bytes, chunks) = Blob.assemble(header: header, sections: sections, coder: coder)
        let protectedStored = chunks.filter { $0.kind == .protectedKeys || $0.kind == .protectedValues }.reduce(0) { $0 + $1.storedLength }
        let codeStored = chunks.filter { $0.kind != .protectedKeys && $0.kind != .protectedValues && $0.kind != .positions }
            .reduce(0) { $0 + $1.storedLength }
        let overhead = bytes.count - protectedStored - codeStored
        var report = CompressionReport(method: method, tokens: cache.tokenCount, compressedTokens: n,
                                       nominalRatio: plan.ratio, compressedTokensFP16Bytes: 4 * n * p,
                                       cacheFP16Bytes: cache.fp16Bytes,
                                       compressedTokensBytesBeforeEntropy: rawCompressedBytes + overhead,
                                       compressedTokensBytes: codeStored + overhead, totalBytes: bytes.count)
        report.outOfWindowTokens = q.outOfWindowTokens > 0 ? q.outOfWindowTokens : nil
        return CompressedCache(bytes: bytes, report: report)
    }

    /// The blob header's geometry, RoPE and token count (its checksum verified; no chunk inflated).
    public func shape(of bytes: [UInt8]) throws -> CompressedShape? {
        let s = try Blob.summary(of: bytes)
        return CompressedShape(geometry: s.geometry, rope: s.rope, layerAttention: s.layerAttention, tokens: s.tokens)
    }

    public func decompress(_ bytes: [UInt8]) throws(KVTCError) -> KVCache {
        let decoder = try LayerwiseDecoder(bytes, compressor: self)
        return try decoder.decodeAll()
    }

    /// Decodes consecutive blobs of one sequence straight into `cache`: every blob is
    /// opened (checked, inflated, dequantized) first, then each run of blobs whose
    /// compressed tokens are adjacent is reconstructed with one GEMM per stream, so the
    /// basis is streamed once per run rather than once per blob.
    public func decompress(sequence blobs: [[UInt8]], appendingTo cache: inout KVCache) throws(SequenceDecodingError) {
        // Open the blobs concurrently (each is checked, inflated and dequantized alone).
        var opened = [Result<LayerwiseDecoder, KVTCError>?](repeating: nil, count: blobs.count)
        opened.withUnsafeMutableBufferPointer { results in
            let box = UncheckedSendable(results.baseAddress!)
            Parallel.forEach(blobs.count) { i in
                box.value[i] = Result { () throws(KVTCError) in try LayerwiseDecoder(blobs[i], compressor: self) }
            }
        }
        var decoders: [LayerwiseDecoder] = []
        decoders.reserveCapacity(blobs.count)
        for (i, result) in opened.enumerated() {
            do {
                let d = try result!.get()
                guard d.geometry == cache.geometry, d.header.rope == cache.rope,
                      d.header.attention == cache.layerAttention else {
                    throw KVTCError.cache(.mismatch("blob of \(d.geometry) cannot extend a cache of \(cache.geometry)"))
                }
                decoders.append(d)
            } catch { throw SequenceDecodingError(index: i, underlying: error) }
        }
        LayerwiseDecoder.decode(decoders, appendingTo: &cache)
    }

    /// Decodes straight into `cache`'s storage: no intermediate cache, no copy.
    public func decompress(_ bytes: [UInt8], appendingTo cache: inout KVCache) throws(KVTCError) {
        try LayerwiseDecoder(bytes, compressor: self).decode(appendingTo: &cache)
    }
}

/// Decodes a blob one layer at a time: opening it verifies, inflates and dequantizes the
/// PCA coefficients once; each layer then costs one small GEMM against that layer's basis
/// columns, so a consumer can start on layer 0 before the rest is decoded.
public struct LayerwiseDecoder: Sendable {
    let header: BlobHeader
    let keyTables: StreamTables
    let valueTables: StreamTables
    /// `compressedTokens x rank` coefficients per stream.
    let keyCoefficients: [Float]
    let valueCoefficients: [Float]
    /// The out-of-window rows: the full-context layers, their tables and coefficients.
    let outOfWindow: (layers: [Int], keys: StreamTables, values: StreamTables, keyCoefficients: [Float], valueCoefficients: [Float])?
    let protectedKeys: [Float]
    let protectedValues: [Float]
    /// Absolute position of every token.
    public let positions: [Int]

    /// Geometry of the cache.
    public var geometry: KVGeometry { header.geometry }
    /// Tokens in the cache.
    public var tokenCount: Int { header.tokens }

    /// Opens a blob made with `compressor`'s profile (any ratio of that profile).
    public init(_ bytes: [UInt8], compressor: KVTCCompressor) throws(KVTCError) {
        let profile = compressor.profile
        let parsed: (BlobHeader, [SectionChunk], Int)
        do { parsed = try Blob.parseHeader(bytes) } catch { throw .blob(error) }
        let (h, chunks, dataStart) = parsed
        guard h.profileHash == profile.hashBytes else {
            throw .blob(.profileMismatch(blob: hexString(h.profileHash), profile: profile.contentHash))
        }
        guard h.geometry == profile.geometry, h.rope == profile.rope, h.attention == profile.layerAttention else {
            throw .blob(.corrupt("geometry or RoPE differ from the profile it names"))
        }
        guard h.keyPlan.validate(components: profile.keys.basis.rank), h.valuePlan.validate(components: profile.values.basis.rank) else {
            throw .blob(.corrupt("bit plan uses components the profile lacks"))
        }
        let p = h.geometry.featuresPerToken
        let n = h.fullRows, m = h.outOfWindowTokens
        let kc = StreamCoder(plan: h.keyPlan, tokens: n), vc = StreamCoder(plan: h.valuePlan, tokens: n)
        let protectedTokens = h.leadingProtected + h.trailingProtected
        var expected: [SectionKind: Int] = [
            .keyCodes: kc.codeBytes, .keyMeta: kc.metaBytes, .valueCodes: vc.codeBytes, .valueMeta: vc.metaBytes,
            .protectedKeys: h.protectedEncoding.byteCount(values: protectedTokens * p),
            .protectedValues: h.protectedEncoding.byteCount(values: protectedTokens * p),
        ]
        var windowCoders: (keys: StreamCoder, values: StreamCoder)?
        var windowTables: (keys: StreamTables, values: StreamTables)?
        if let plan = h.outOfWindowPlan {
            guard let w = profile.outOfWindow else { throw .blob(.corrupt("out-of-window rows, but the profile has no transforms for them")) }
            guard plan.keys.validate(components: w.keys.basis.rank), plan.values.validate(components: w.values.basis.rank) else {
                throw .blob(.corrupt("out-of-window bit plan uses components the profile lacks"))
            }
            let coders = (StreamCoder(plan: plan.keys, tokens: m), StreamCoder(plan: plan.values, tokens: m))
            expected[.outOfWindowKeyCodes] = coders.0.codeBytes
            expected[.outOfWindowKeyMeta] = coders.0.metaBytes
            expected[.outOfWindowValueCodes] = coders.1.codeBytes
            expected[.outOfWindowValueMeta] = coders.1.metaBytes
            windowCoders = coders
            // Reuse the compressor's tables when its plan is the blob's.
            if let t = compressor.outOfWindowTables, let o = compressor.plan.outOfWindow, o.keys == plan.keys, o.values == plan.values {
                windowTables = t
            } else {
                windowTables = (StreamTables(w.keys, plan: plan.keys, backend: compressor.backend,
                                             reconstruction: compressor.reconstruction),
                                StreamTables(w.values, plan: plan.values, backend: compressor.backend,
                                             reconstruction: compressor.reconstruction))
            }
        }
        if h.explicitPositions { expected[.positions] = 8 * h.tokens }
        let codeKinds: [(SectionKind, StreamCoder)] = [(.keyCodes, kc), (.valueCodes, vc)]
            + (windowCoders.map { [(.outOfWindowKeyCodes, $0.keys), (.outOfWindowValueCodes, $0.values)] } ?? [])
        if h.codeCoding == .rans {
            // rANS sections have no length the plan implies; their own directory is checked.
            for (kind, _) in codeKinds {
                expected[kind] = chunks.filter { $0.kind == kind }.reduce(0) { $0 + $1.rawLength }
            }
        }
        var sections: [SectionKind: [UInt8]]
        do { sections = try Blob.sections(bytes, chunks: chunks, dataStart: dataStart, expected: expected) } catch { throw .blob(error) }
        // Code sections become code planes, one byte per code, which dequantization reads.
        for (kind, coder) in codeKinds {
            let section = sections[kind] ?? []
            if h.codeCoding == .rans {
                do { sections[kind] = try coder.codePlanes(rans: section) } catch {
                    throw .blob(.corrupt("\(kind) codes: \(error.reason)"))
                }
            } else {
                guard section.count == coder.codeBytes else { throw .blob(.corrupt("\(kind) codes: \(section.count) bytes, expected \(coder.codeBytes)")) }
                sections[kind] = coder.codePlanes(packed: section)
            }
        }

        // Reuse the compressor's tables when its plan is the blob's; otherwise build them.
        keyTables = h.keyPlan == compressor.plan.keys ? compressor.keyTables
            : StreamTables(profile.keys, plan: h.keyPlan, backend: compressor.backend,
                                             reconstruction: compressor.reconstruction)
        valueTables = h.valuePlan == compressor.plan.values ? compressor.valueTables
            : StreamTables(profile.values, plan: h.valuePlan, backend: compressor.backend,
                                             reconstruction: compressor.reconstruction)
        func dequantize(_ coder: StreamCoder, _ planes: [UInt8], _ meta: [UInt8]) throws(KVTCError) -> [Float] {
            guard planes.count == coder.planeBytes, meta.count == coder.metaBytes else { throw .blob(.corrupt("code or metadata section size")) }
            var y = [Float](repeating: 0, count: coder.tokens * coder.plan.componentsUsed)
            var bad: StreamCoder.InvalidMetadata?
            y.withUnsafeMutableBufferPointer { out in
                planes.withUnsafeBufferPointer { c in
                    meta.withUnsafeBufferPointer { m in
                        do { try coder.decode(planes: c.baseAddress!, meta: m.baseAddress!, into: out.baseAddress!) } catch { bad = error as? StreamCoder.InvalidMetadata }
                    }
                }
            }
            if let bad { throw .blob(.corrupt("invalid shift or scale in group \(bad.group), token \(bad.token)")) }
            return y
        }
        keyCoefficients = try dequantize(kc, sections[.keyCodes] ?? [], sections[.keyMeta] ?? [])
        valueCoefficients = try dequantize(vc, sections[.valueCodes] ?? [], sections[.valueMeta] ?? [])
        var window: (layers: [Int], keys: StreamTables, values: StreamTables, keyCoefficients: [Float], valueCoefficients: [Float])?
        if let coders = windowCoders, let tables = windowTables, let w = profile.outOfWindow {
            let yk = try dequantize(coders.keys, sections[.outOfWindowKeyCodes] ?? [], sections[.outOfWindowKeyMeta] ?? [])
            let yv = try dequantize(coders.values, sections[.outOfWindowValueCodes] ?? [], sections[.outOfWindowValueMeta] ?? [])
            window = (w.layers, tables.keys, tables.values, yk, yv)
        }
        outOfWindow = window
        func floats(_ b: [UInt8]) throws(KVTCError) -> [Float] {
            guard b.count == h.protectedEncoding.byteCount(values: protectedTokens * p) else { throw .blob(.corrupt("protected tokens")) }
            let out = h.protectedEncoding.decode(b[...])
            guard out.allSatisfy({ $0.isFinite }) else { throw .blob(.corrupt("protected tokens are not finite")) }
            return out
        }
        protectedKeys = try floats(sections[.protectedKeys] ?? [])
        protectedValues = try floats(sections[.protectedValues] ?? [])
        if h.explicitPositions {
            var r = ByteReader(sections[.positions] ?? [])
            var pos: [Int] = []
            do { for _ in 0..<h.tokens { pos.append(try r.int(max: Int(Int32.max))) } } catch { throw .blob(.corrupt("positions")) }
            positions = pos
        } else {
            positions = (0..<h.tokens).map { h.firstPosition + $0 }
        }
        header = h
    }

    /// Reconstructs `columns` (a contiguous block of features) of one stream for every token
    /// into `out` (row stride `stride`).
    private func reconstruct(keys: Bool, columns: Range<Int>, into out: UnsafeMutablePointer<Float>, stride: Int) {
        copyProtected(keys: keys, columns: columns, into: out, stride: stride)
        reconstructOutOfWindow(keys: keys, columns: columns, into: out, stride: stride)
        let h = header
        let first = h.firstFullRow
        (keys ? keyCoefficients : valueCoefficients).withUnsafeBufferPointer { y in
            Self.reconstructCompressed(tables: keys ? keyTables : valueTables, coefficients: y.baseAddress!,
                                       rows: h.fullRows, rotation: keys ? h.keyRotation : nil,
                                       positions: positions[first..<(first + h.fullRows)],
                                       columns: columns, into: out + first * stride, stride: stride)
        }
    }

    /// Writes the out-of-window rows of `columns` (of the whole feature row) into their
    /// places in `out` (row 0 is the blob's first token): the full-context layers'
    /// features reconstructed, the sliding layers' zero (no query will read them).
    private func reconstructOutOfWindow(keys: Bool, columns: Range<Int>, into out: UnsafeMutablePointer<Float>, stride: Int) {
        let h = header
        guard let w = outOfWindow, h.outOfWindowTokens > 0 else { return }
        let m = h.outOfWindowTokens, lead = h.leadingProtected
        let rows = out + lead * stride
        for t in 0..<m { (rows + t * stride).update(repeating: 0, count: columns.count) }
        let f = h.geometry.featuresPerLayer
        for (j, l) in w.layers.enumerated() {
            let block = (l * f)..<((l + 1) * f)
            let wanted = block.clamped(to: columns)
            guard !wanted.isEmpty else { continue }
            let basisColumns = (j * f + wanted.lowerBound - l * f)..<(j * f + wanted.upperBound - l * f)
            (keys ? w.keyCoefficients : w.valueCoefficients).withUnsafeBufferPointer { y in
                Self.reconstructCompressed(tables: keys ? w.keys : w.values, coefficients: y.baseAddress!, rows: m,
                                           rotation: keys ? h.keyRotation : nil, positions: positions[lead..<(lead + m)],
                                           columns: wanted, basisColumns: basisColumns,
                                           into: rows + (wanted.lowerBound - columns.lowerBound), stride: stride)
            }
        }
    }

    /// Copies the protected rows of one stream into their places in `out`.
    private func copyProtected(keys: Bool, columns: Range<Int>, into out: UnsafeMutablePointer<Float>, stride: Int) {
        let h = header
        let p = h.geometry.featuresPerToken
        let lead = h.leadingProtected, n = h.compressedTokens
        (keys ? protectedKeys : protectedValues).withUnsafeBufferPointer { e in
            for t in 0..<(lead + h.trailingProtected) {
                let dst = t < lead ? t : t + n
                (out + dst * stride).update(from: e.baseAddress! + t * p + columns.lowerBound, count: columns.count)
            }
        }
    }

    /// Writes `rows` reconstructed rows `Y * B[:, basisColumns] + mean[basisColumns]` into
    /// `out` (row stride `stride`), re-applying the rotation (keys) of the feature columns
    /// `columns` at `positions`. `basisColumns` defaults to `columns` (tables over every
    /// layer); the out-of-window tables hold the full-context layers only.
    static func reconstructCompressed(tables: StreamTables, coefficients y: UnsafePointer<Float>, rows n: Int,
                                      rotation: KeyRotation?, positions: ArraySlice<Int>, columns: Range<Int>,
                                      basisColumns: Range<Int>? = nil,
                                      into c: UnsafeMutablePointer<Float>, stride: Int) {
        guard n > 0 else { return }
        let width = columns.count
        let source = basisColumns ?? columns
        precondition(source.count == width)
        tables.reconstruct(y, count: n, columns: source, into: c, ldc: stride)
        rotation?.rotate(rows: c, stride: stride, columns: columns, positions: Array(positions), inverse: false)
    }

    /// Keys and values of layer `l`, each `tokenCount x (kvHeads * headDim)` row-major.
    public func layer(_ l: Int) -> (keys: [Float], values: [Float]) {
        let f = header.geometry.featuresPerLayer
        let cols = (l * f)..<((l + 1) * f)
        var k = [Float](repeating: 0, count: header.tokens * f)
        var v = k
        k.withUnsafeMutableBufferPointer { reconstruct(keys: true, columns: cols, into: $0.baseAddress!, stride: f) }
        v.withUnsafeMutableBufferPointer { reconstruct(keys: false, columns: cols, into: $0.baseAddress!, stride: f) }
        return (k, v)
    }

    /// The whole cache.
    public func decodeAll() throws(KVTCError) -> KVCache {
        var cache = KVCache(geometry: header.geometry, rope: header.rope, layerAttention: header.layerAttention,
                            model: header.model, reservingCapacity: header.tokens)
        try decode(appendingTo: &cache)
        return cache
    }

    /// Appends the tokens of consecutive opened blobs (same geometry and RoPE as `cache`).
    static func decode(_ decoders: [LayerwiseDecoder], appendingTo cache: inout KVCache) {
        guard !decoders.isEmpty else { return }
        let g = cache.geometry
        let p = g.featuresPerToken
        let first = cache.appendZeroedTokens(positions: decoders.flatMap(\.positions))
        // Runs of blobs with adjacent compressed rows and the same tables.
        var runs: [Range<Int>] = []
        var lo = 0
        for i in 1...decoders.count {
            let split = i == decoders.count || decoders[i].header.leadingProtected > 0 || decoders[i - 1].header.trailingProtected > 0
                || decoders[i].header.outOfWindowTokens > 0
                || decoders[i].keyTables !== decoders[lo].keyTables || decoders[i].valueTables !== decoders[lo].valueTables
            if split { runs.append(lo..<i); lo = i }
        }
        var starts: [Int] = []
        var t = first
        for d in decoders { starts.append(t); t += d.tokenCount }
        cache.withMutableStreams { k, v in
            for (i, d) in decoders.enumerated() {
                d.copyProtected(keys: true, columns: 0..<p, into: k.baseAddress! + starts[i] * p, stride: p)
                d.copyProtected(keys: false, columns: 0..<p, into: v.baseAddress! + starts[i] * p, stride: p)
                d.reconstructOutOfWindow(keys: true, columns: 0..<p, into: k.baseAddress! + starts[i] * p, stride: p)
                d.reconstructOutOfWindow(keys: false, columns: 0..<p, into: v.baseAddress! + starts[i] * p, stride: p)
            }
            for run in runs {
                let head = decoders[run.lowerBound]
                let rows = run.reduce(0) { $0 + decoders[$1].header.fullRows }
                let out = starts[run.lowerBound] + head.header.firstFullRow
                let positions = run.flatMap { i in
                    let h = decoders[i].header
                    return decoders[i].positions[h.firstFullRow..<(h.firstFullRow + h.fullRows)]
                }
                for keys in [true, false] {
                    let tables = keys ? head.keyTables : head.valueTables
                    var y: [Float] = keys ? head.keyCoefficients : head.valueCoefficients
                    if run.count > 1 {
                        y.reserveCapacity(rows * tables.rank)
                        for i in run.dropFirst() { y.append(contentsOf: keys ? decoders[i].keyCoefficients : decoders[i].valueCoefficients) }
                    }
                    y.withUnsafeBufferPointer { yb in
                        reconstructCompressed(tables: tables, coefficients: yb.baseAddress!, rows: rows,
                                              rotation: keys ? head.header.keyRotation : nil,
                                              positions: positions[...], columns: 0..<p,
                                              into: (keys ? k : v).baseAddress! + out * p, stride: p)
                    }
                }
            }
        }
    }

    /// Appends every token to `cache`, which must have the blob's geometry and RoPE,
    /// reconstructing straight into its storage.
    public func decode(appendingTo cache: inout KVCache) throws(KVTCError) {
        guard cache.geometry == header.geometry else {
            throw .cache(.mismatch("geometry \(header.geometry) vs \(cache.geometry)"))
        }
        guard cache.rope == header.rope, cache.layerAttention == header.attention else {
            throw .cache(.mismatch("RoPE settings differ"))
        }
        let p = header.geometry.featuresPerToken
        let first = cache.appendZeroedTokens(positions: positions)
        cache.withMutableStreams { k, v in
            reconstruct(keys: true, columns: 0..<p, into: k.baseAddress! + first * p, stride: p)
            reconstruct(keys: false, columns: 0..<p, into: v.baseAddress! + first * p, stride: p)
        }
    }
}
