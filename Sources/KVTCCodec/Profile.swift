import Crypto
import Foundation
import KVTCCache
import KVTCNumerics

/// Which tokens are kept exact.
public struct Protection: Hashable, Codable, Sendable {
    /// Tokens at absolute positions below this are attention sinks, kept exact.
    public var sinkTokens: Int
    /// The most recent tokens kept exact.
    public var recentTokens: Int

    public init(sinkTokens: Int = 4, recentTokens: Int = 128) {
        self.sinkTokens = sinkTokens
        self.recentTokens = recentTokens
    }

    /// The design's defaults: 4 sinks, 128 recent.
    public static let standard = Protection()

    /// How many of `cache`'s tokens are kept exact at its start (the leading tokens whose
    /// positions are below ``sinkTokens``, so a later chunk of a sequence has none) and at
    /// its end (the last ``recentTokens`` of the rest); the tokens between are compressed.
    public func exactTokens(of cache: KVCache) -> (lead: Int, trail: Int) {
        var lead = 0
        while lead < cache.tokenCount, cache.positions[lead] < sinkTokens { lead += 1 }
        return (lead, min(recentTokens, cache.tokenCount - lead))
    }
}

/// The bit plans for one target ratio.
public struct RatioPlan: Hashable, Codable, Sendable {
    /// Nominal compression ratio before entropy coding (16 means 1 bit per fp16 bit / 16).
    public var ratio: Double
    /// Plan for the key stream.
    public var keys: BitPlan
    /// Plan for the value stream.
    public var values: BitPlan
    /// Mean squared error per calibration row the plans achieve (keys, values), in the
    /// feature domain of the basis.
    public var calibrationErrorKeys: Double
    public var calibrationErrorValues: Double

    /// Plans for the tokens every sliding window has passed (only the full-context layers'
    /// features), for profiles with ``Profile/outOfWindow`` transforms.
    public var outOfWindow: OutOfWindowPlan?

    public init(ratio: Double, keys: BitPlan, values: BitPlan, calibrationErrorKeys: Double, calibrationErrorValues: Double,
                outOfWindow: OutOfWindowPlan? = nil) {
        self.ratio = ratio
        self.keys = keys
        self.values = values
        self.calibrationErrorKeys = calibrationErrorKeys
        self.calibrationErrorValues = calibrationErrorValues
        self.outOfWindow = outOfWindow
    }
}

/// Bit plans at one ratio for the rows of tokens that no sliding-window layer can see any
/// more, which hold only the full-context layers' features.
public struct OutOfWindowPlan: Hashable, Codable, Sendable {
    public var keys: BitPlan
    public var values: BitPlan
    /// Mean squared error per calibration row (keys, values), as in ``RatioPlan``.
    public var calibrationErrorKeys: Double
    public var calibrationErrorValues: Double

    public init(keys: BitPlan, values: BitPlan, calibrationErrorKeys: Double, calibrationErrorValues: Double) {
        self.keys = keys
        self.values = values
        self.calibrationErrorKeys = calibrationErrorKeys
        self.calibrationErrorValues = calibrationErrorValues
    }
}

/// The transforms of tokens older than every sliding window. A sliding-window layer never
/// attends to a token its window has passed, so for such tokens a cache only needs the
/// layers that attend over the whole context: their features (keys un-rotated, layer by
/// layer in ``layers`` order) get their own PCA, fitted on the same calibration rows.
public struct OutOfWindowTransforms: Sendable, Equatable {
    /// The full-context layers, ascending; their features make the rows of these transforms.
    public var layers: [Int]
    public var keys: StreamTransform
    public var values: StreamTransform

    public init(layers: [Int], keys: StreamTransform, values: StreamTransform) {
        self.layers = layers
        self.keys = keys
        self.values = values
    }

    /// The full-context layers of a model whose layers `attention` describes, or `nil` when
    /// no layer has a window or every layer has one (nothing to trim, or nothing to keep).
    public static func fullContextLayers(_ attention: [LayerAttention]) -> [Int]? {
        let full = attention.indices.filter { attention[$0].window == nil }
        return full.isEmpty || full.count == attention.count ? nil : full
    }
}

/// Where a profile came from.
public struct Provenance: Hashable, Codable, Sendable {
    /// A calibration source (a cache file or a text document).
    public struct Source: Hashable, Codable, Sendable {
        public var name: String
        public var sha256: String
        public var tokens: Int
        public init(name: String, sha256: String, tokens: Int) {
            self.name = name
            self.sha256 = sha256
            self.tokens = tokens
        }
    }

    /// Calibration rows used per stream.
    public var rows: Int
    public var sources: [Source]
    /// Identity of the model that produced the caches, when known.
    public var model: String
    /// Tool and version that made the profile.
    public var creator: String
    /// Rank cap given at calibration, if any.
    public var rankCap: Int?
    /// How features were scaled before the PCA (`nil` in profiles made before recipes were
    /// recorded: the paper's method, or equalized when the profile has feature scales).
    public var recipe: CalibrationRecipe?
    /// The keys' share of each ratio's bits (`nil` in profiles made before it was recorded:
    /// 0.5).
    public var keyShare: Double?

    public init(rows: Int, sources: [Source], model: String, creator: String = "kvtc", rankCap: Int? = nil,
                recipe: CalibrationRecipe? = nil) {
        self.rows = rows
        self.sources = sources
        self.model = model
        self.creator = creator
        self.rankCap = rankCap
        self.recipe = recipe
    }
}

/// One stream's transform: mean, optional per-feature scale, basis.
public struct StreamTransform: Sendable, Equatable {
    /// Mean and basis, in the (possibly scaled) feature domain.
    public var basis: PCABasis
    /// Per-feature multiplier applied after centering and before projection (inverted after
    /// reconstruction); nil means none (the paper's method).
    public var featureScale: [Float]?

    public init(basis: PCABasis, featureScale: [Float]? = nil) {
        self.basis = basis
        self.featureScale = featureScale
    }
}

/// Errors reading or using a profile.
public enum ProfileError: Error, Equatable, CustomStringConvertible {
    case notAProfile
    case unsupportedVersion(Int)
    case corrupt(String)
    case mismatch(String)
    case unknownRatio(Double, available: [Double])
    case io(String)

    public var description: String {
        switch self {
        case .notAProfile: return "not a kvtc profile (bad magic)"
        case .unsupportedVersion(let v): return "profile format version \(v) is not supported (this build reads versions 1 to \(Profile.formatVersion))"
        case .corrupt(let m): return "profile is corrupt: \(m)"
        case .mismatch(let m): return "profile does not fit the cache: \(m)"
        case .unknownRatio(let r, let a): return "profile has no plan for ratio \(Profile.formatRatio(r)); available: \(a.map { Profile.formatRatio($0) }.joined(separator: ", "))"
        case .io(let m): return m
        }
    }
}

/// The result of calibration: everything compression and decompression need for one model.
///
/// A profile is immutable and identified by ``contentHash``, the SHA-256 of its encoding;
/// blobs record that hash and refuse to decode with any other profile.
public struct Profile: Sendable {
    /// Newest version of the file format written by ``encoded()``: 3 for profiles with
    /// ``outOfWindow`` transforms (their arrays follow the values'), 2 for profiles whose
    /// layers differ in rotation or window (the header lists every layer's), 1 otherwise
    /// (byte for byte as before, so uniform profiles keep their hashes).
    public static let formatVersion = 3
    static let magic = Array("KVTCPRF\u{1}".utf8)

    public let geometry: KVGeometry
    public let rope: RoPE
    /// Every layer's rotation and window (all ``rope`` over the whole context for a
    /// uniform model).
    public let layerAttention: [LayerAttention]
    public let protection: Protection
    public let keys: StreamTransform
    public let values: StreamTransform
    /// Transforms of the tokens every sliding window has passed (version 3), for models
    /// with both sliding-window and full-context layers; `nil` in profiles that keep every
    /// layer of every token.
    public let outOfWindow: OutOfWindowTransforms?
    /// Plans, ascending by ratio.
    public let plans: [RatioPlan]
    public let provenance: Provenance
    /// Hex SHA-256 of the encoded profile (excluding the trailing hash itself).
    public let contentHash: String
    /// The raw 32 bytes of ``contentHash``.
    public let hashBytes: [UInt8]

    /// Builds a profile, truncating each basis to the components its plans use.
    /// `layerAttention` is every layer's rotation and window, or `nil` when every layer uses
    /// `rope` over the whole context (no default: a profile derived from another must keep
    /// its layers).
    public init(geometry: KVGeometry, rope: RoPE, layerAttention: [LayerAttention]?, protection: Protection,
                keys: StreamTransform, values: StreamTransform, outOfWindow: OutOfWindowTransforms? = nil,
                plans: [RatioPlan], provenance: Provenance) {
        let kUsed = plans.map(\.keys.componentsUsed).max() ?? 0
        let vUsed = plans.map(\.values.componentsUsed).max() ?? 0
        var k = keys, v = values
        k.basis = keys.basis.truncated(to: kUsed)
        v.basis = values.basis.truncated(to: vUsed)
        var window = outOfWindow
        if var w = window {
            precondition(plans.allSatisfy { $0.outOfWindow != nil }, "out-of-window transforms need a plan at every ratio")
            w.keys.basis = w.keys.basis.truncated(to: plans.map { $0.outOfWindow!.keys.componentsUsed }.max() ?? 0)
            w.values.basis = w.values.basis.truncated(to: plans.map { $0.outOfWindow!.values.componentsUsed }.max() ?? 0)
            window = w
        }
        self.outOfWindow = window
        self.geometry = geometry
        self.rope = rope
        let layers = layerAttention ?? LayerAttention.uniform(rope, layers: geometry.layers)
        self.layerAttention = layers
        self.protection = protection
        self.keys = k
        self.values = v
        self.plans = plans.sorted { $0.ratio < $1.ratio }
        self.provenance = provenance
        let body = Profile.encodeBody(geometry: geometry, rope: rope, layers: layers, protection: protection, keys: k,
                                      values: v, outOfWindow: window, plans: self.plans, provenance: provenance)
        let digest = Array(SHA256.hash(data: body))
        self.hashBytes = digest
        self.contentHash = hexString(digest)
    }

    /// The plan for a nominal ratio.
    public func plan(ratio: Double) throws(ProfileError) -> RatioPlan {
        guard let p = plans.first(where: { abs($0.ratio - ratio) < 1e-9 }) else {
            throw .unknownRatio(ratio, available: plans.map(\.ratio))
        }
        return p
    }

    /// Checks that a cache has this profile's geometry and RoPE.
    public func check(_ cache: KVCache) throws(ProfileError) {
        guard cache.geometry == geometry else {
            throw .mismatch("cache is \(cache.geometry), profile is \(geometry)")
        }
        guard cache.rope == rope else {
            throw .mismatch("cache RoPE \(cache.rope.layout.rawValue) theta \(cache.rope.theta) dims \(cache.rope.rotaryDims), profile RoPE \(rope.layout.rawValue) theta \(rope.theta) dims \(rope.rotaryDims)")
        }
        guard cache.layerAttention == layerAttention else {
            throw .mismatch("the cache's per-layer RoPE or attention windows differ from the profile's")
        }
    }

    /// A compression ratio as text, the one format for ratios everywhere: `16x` for a
    /// whole ratio, else its shortest exact decimal (`6.25x`); with `fractionDigits`, always
    /// that many decimals (`18.45x`), as measured ratios are shown.
    public static func formatRatio(_ r: Double, fractionDigits: Int? = nil) -> String {
        if let fractionDigits { return String(format: "%.\(fractionDigits)fx", r) }
        return r.isFinite && r == r.rounded() ? "\(Int(r))x" : "\(r)x"
    }

    // MARK: File format
    //
    // magic (8) | version u32 | JSON header length u32 | JSON header | arrays | SHA-256 (32)
    // The arrays are, for keys then values: mean, scale (count 0 if none), variances,
    // basis (rank*p) as little-endian f32/f64. The hash covers everything before it.

    private struct Header: Codable {
        var geometry: KVGeometry
        var rope: RoPE
        /// Every layer's rotation and window, present only when they differ (version 2).
        var layerAttention: [LayerAttention]?
        var protection: Protection
        var plans: [RatioPlan]
        var provenance: Provenance
        var keysRank: Int
        var valuesRank: Int
        var keysTotalVariance: Double
        var valuesTotalVariance: Double
        /// Version 3: the out-of-window transforms' layers, ranks and total variances.
        var outOfWindow: OutOfWindowHeader?
    }

    private struct OutOfWindowHeader: Codable {
        var layers: [Int]
        var keysRank: Int
        var valuesRank: Int
        var keysTotalVariance: Double
        var valuesTotalVariance: Double
    }

    private static func writeStream(_ s: StreamTransform, _ w: inout ByteWriter) {
        w.floats(s.basis.mean)
        w.floats(s.featureScale ?? [])
        w.u64(UInt64(s.basis.variances.count))
        for v in s.basis.variances { w.f64(v) }
        w.floats(s.basis.components.elements)
    }

    private static func readStream(_ r: inout ByteReader<[UInt8]>, dimension p: Int, rank: Int, totalVariance: Double) throws -> StreamTransform {
        let mean = try r.floats(maxCount: p)
        let scale = try r.floats(maxCount: p)
        let nv = try r.int(max: p)
        var vars: [Double] = []
        for _ in 0..<nv { vars.append(try r.f64()) }
        let comps = try r.floats(maxCount: p * p)
        guard mean.count == p, scale.isEmpty || scale.count == p, nv == rank, comps.count == rank * p else {
            throw ProfileError.corrupt("array sizes do not match the geometry")
        }
        let basis = PCABasis(mean: mean, components: Matrix(rows: rank, columns: p, elements: comps),
                             variances: vars, totalVariance: totalVariance)
        return StreamTransform(basis: basis, featureScale: scale.isEmpty ? nil : scale)
    }

    private static func encodeBody(geometry: KVGeometry, rope: RoPE, layers: [LayerAttention], protection: Protection,
                                   keys: StreamTransform, values: StreamTransform, outOfWindow: OutOfWindowTransforms?,
                                   plans: [RatioPlan], provenance: Provenance) -> [UInt8] {
        let uniform = LayerAttention.areUniform(layers, rope: rope)
        let window = outOfWindow.map {
            OutOfWindowHeader(layers: $0.layers, keysRank: $0.keys.basis.rank, valuesRank: $0.values.basis.rank,
                              keysTotalVariance: $0.keys.basis.totalVariance, valuesTotalVariance: $0.values.basis.totalVariance)
        }
        let header = Header(geometry: geometry, rope: rope, layerAttention: uniform ? nil : layers, protection: protection,
                            plans: plans, provenance: provenance,
                            keysRank: keys.basis.rank, valuesRank: values.basis.rank,
                            keysTotalVariance: keys.basis.totalVariance, valuesTotalVariance: values.basis.totalVariance,
                            outOfWindow: window)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = Array(try! encoder.encode(header))
        var w = ByteWriter()
        w.raw(magic)
        w.u32(outOfWindow != nil ? 3 : uniform ? 1 : 2)
        w.u32(UInt32(json.count))
        w.raw(json)
        for s in [keys, values] { writeStream(s, &w) }
        if let outOfWindow { for s in [outOfWindow.keys, outOfWindow.values] { writeStream(s, &w) } }
        return w.bytes
    }

    /// The profile file's bytes.
    public func encoded() -> [UInt8] {
        var body = Profile.encodeBody(geometry: geometry, rope: rope, layers: layerAttention, protection: protection,
                                      keys: keys, values: values, outOfWindow: outOfWindow, plans: plans, provenance: provenance)
        body.append(contentsOf: hashBytes)
        return body
    }

    /// Reads a profile, verifying its hash and internal consistency.
    public init(bytes: [UInt8]) throws(ProfileError) {
        guard bytes.count >= 16 + 32, Array(bytes[0..<8]) == Profile.magic else { throw .notAProfile }
        let body = Array(bytes[0..<(bytes.count - 32)])
        let stored = Array(bytes[(bytes.count - 32)...])
        var r = ByteReader(body)
        do {
            _ = try r.raw(8)
            let version = Int(try r.u32())
            guard (1...Profile.formatVersion).contains(version) else { throw ProfileError.unsupportedVersion(version) }
            guard Array(SHA256.hash(data: body)) == stored else { throw ProfileError.corrupt("content hash does not match") }
            let n = Int(try r.u32())
            let json = try r.raw(n)
            let h: Header
            do { h = try JSONDecoder().decode(Header.self, from: Data(json)) } catch { throw ProfileError.corrupt("header: \(error)") }
            let p = h.geometry.featuresPerToken
            guard h.geometry.layers > 0, h.geometry.kvHeads > 0, h.geometry.headDim > 0, p < 1 << 24 else { throw ProfileError.corrupt("geometry") }
            var streams: [StreamTransform] = []
            for (rank, total) in [(h.keysRank, h.keysTotalVariance), (h.valuesRank, h.valuesTotalVariance)] {
                streams.append(try Profile.readStream(&r, dimension: p, rank: rank, totalVariance: total))
            }
            var window: OutOfWindowTransforms?
            if let w = h.outOfWindow {
                guard version >= 3, let layers = h.layerAttention, let full = OutOfWindowTransforms.fullContextLayers(layers),
                      full == w.layers else {
                    throw ProfileError.corrupt("out-of-window transforms without sliding and full-context layers")
                }
                let pw = w.layers.count * h.geometry.featuresPerLayer
                let k = try Profile.readStream(&r, dimension: pw, rank: w.keysRank, totalVariance: w.keysTotalVariance)
                let v = try Profile.readStream(&r, dimension: pw, rank: w.valuesRank, totalVariance: w.valuesTotalVariance)
                window = OutOfWindowTransforms(layers: w.layers, keys: k, values: v)
            }
            guard r.remaining == 0 else { throw ProfileError.corrupt("trailing bytes") }
            for plan in h.plans {
                guard plan.keys.validate(components: h.keysRank), plan.values.validate(components: h.valuesRank) else {
                    throw ProfileError.corrupt("plan for \(plan.ratio)x uses components the basis lacks")
                }
                guard (plan.outOfWindow == nil) == (h.outOfWindow == nil) else {
                    throw ProfileError.corrupt("plan for \(plan.ratio)x and the out-of-window transforms disagree")
                }
                if let o = plan.outOfWindow, let w = h.outOfWindow {
                    guard o.keys.validate(components: w.keysRank), o.values.validate(components: w.valuesRank) else {
                        throw ProfileError.corrupt("out-of-window plan for \(plan.ratio)x uses components the basis lacks")
                    }
                }
            }
            if let layers = h.layerAttention {
                guard version >= 2, layers.count == h.geometry.layers else { throw ProfileError.corrupt("per-layer attention") }
                for l in layers {
                    do { try l.rope.validate(headDim: h.geometry.headDim) } catch { throw ProfileError.corrupt("layer RoPE: \(error)") }
                    if let w = l.window, w < 1 { throw ProfileError.corrupt("attention window \(w)") }
                }
            }
            self.geometry = h.geometry
            self.rope = h.rope
            self.layerAttention = h.layerAttention ?? LayerAttention.uniform(h.rope, layers: h.geometry.layers)
            self.protection = h.protection
            self.keys = streams[0]
            self.values = streams[1]
            self.outOfWindow = window
            self.plans = h.plans
            self.provenance = h.provenance
            self.hashBytes = stored
            self.contentHash = hexString(stored)
        } catch let e as ProfileError {
            throw e
        } catch {
            throw .corrupt("truncated or malformed")
        }
    }

    /// Reads a profile file.
    public init(contentsOf path: String) throws(ProfileError) {
        guard let data = FileManager.default.contents(atPath: path) else { throw .io("cannot read \(path)") }
        try self.init(bytes: [UInt8](data))
    }

    /// Writes the profile atomically.
    public func write(to path: String) throws(ProfileError) {
        do { try Data(encoded()).write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
            throw .io("cannot write \(path): \(error.localizedDescription)")
        }
    }
}
