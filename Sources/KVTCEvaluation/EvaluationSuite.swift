import Foundation
import KVTCCalibration
import KVTCCache
import KVTCCodec
import KVTCModels
import KVTCNumerics

/// Which methods an evaluation runs besides KVTC itself.
public enum Baseline: String, CaseIterable, Sendable {
    case fp8, int8, int4, kivi2, kivi4
    case evictStrided = "evict-strided"
    case evictAttention = "evict-attention"
    case dropMiddle = "drop-middle"
    case perLayerPCA = "per-layer-pca"
    /// For a model with sliding-window layers: one basis for the global layers and one for
    /// the sliding ones (`kvtc-layer-sets`), beside one basis over all layers.
    case layerSets = "layer-sets"
    case noRoPERemoval = "no-rope-removal"
    case truncation
    /// KVTC calibrated with each recipe other than the standard one (`kvtc-paper`, ...).
    case recipes
}

/// Builds every compressor of an evaluation from the model and corpus (profiles are built
/// once and cached on disk) and runs the harness and the retrieval task.
public struct EvaluationSuite {
    public var model: any LanguageModel
    public var corpus: Corpus
    public var ratios: [Double]
    public var baselines: [Baseline]
    public var evictionRatios: [Double] = [4, 8, 16]
    public var calibration: CorpusCalibrationOptions = .standard
    public var protection: Protection = .standard
    /// Attention scores for attention-based eviction, recorded when caches are made.
    public let scoreBook = AttentionScoreBook()

    public init(model: any LanguageModel, corpus: Corpus, ratios: [Double], baselines: [Baseline]) {
        self.model = model
        self.corpus = corpus
        self.ratios = ratios
        self.baselines = baselines
        calibration.calibration.ratios = Array(Set(ratios + [16])).sorted()
    }

    /// The calibration options of the paper's recipe (its ablations start from them).
    var paperOptions: CalibrationOptions {
        var o = calibration.calibration
        o.recipe = .paper
        o.keyShare = CalibrationRecipe.paper.standardKeyShare
        o.types = nil
        return o
    }

    /// Every compressor to evaluate, in table order.
    public func compressors(progress: @escaping (String) -> Void) throws -> [any CacheCompressor] {
        var runMemo: CorpusCalibration.Run?
        func run() throws -> CorpusCalibration.Run {
            if let r = runMemo { return r }
            let r = try CorpusCalibration.run(model: model, documents: corpus.calibration, options: calibration, progress: progress)
            runMemo = r
            return r
        }
        func caches() throws -> [KVCache] { try run().caches }
        func profile(_ variant: String, options: CalibrationOptions? = nil, _ make: @escaping ([KVCache], CalibrationOptions, Provenance) throws -> Profile) throws -> Profile {
            var o = calibration
            if let options { o.calibration = options }
            let key = CorpusCalibration.cacheKey(model: model, corpus: corpus, variant: variant, options: o)
            return try CorpusCalibration.cachedProfile(key: key, variant: variant, progress: progress) {
                let c = try caches()
                return try make(c, o.calibration, CorpusCalibration.provenance(model: model, corpus: corpus, caches: c, options: o))
            }
        }
        /// The corpus profile of `recipe` (the model's sensitivity measured on the same run).
        func recipeProfile(_ recipe: CalibrationRecipe, variant: String) throws -> Profile {
            var o = calibration
            if recipe != o.calibration.recipe { o.calibration.keyShare = recipe.standardKeyShare }
            o.calibration.recipe = recipe
            let key = CorpusCalibration.cacheKey(model: model, corpus: corpus, variant: variant, options: o)
            return try CorpusCalibration.cachedProfile(key: key, variant: variant, progress: progress) {
                try CorpusCalibration.calibrate(run(), model: model, corpus: corpus, options: o, progress: progress)
            }
        }
        let main = try recipeProfile(calibration.calibration.recipe, variant: "kvtc")
        /// KVTC at every ratio with `profile`, reported under `name`; every layer of every
        /// token kept unless `trimsWindows`.
        func kvtc(_ profile: Profile, named name: String, trimsWindows: Bool = false) throws -> [any CacheCompressor] {
            try ratios.map { r in
                var c = try KVTCCompressor(profile: profile, ratio: r, protection: protection)
                c.methodName = name
                c.trimsWindows = trimsWindows
                return c
            }
        }
        // `kvtc` keeps every layer (the codec's own ratio, comparable across models and with
        // the other methods); for a model with sliding windows `kvtc-window` is what
        // `kvtc compress` does by default, and its ratio includes the window saving.
        var out = try kvtc(main, named: "kvtc")
        if main.outOfWindow != nil { out += try kvtc(main, named: "kvtc-window", trimsWindows: true) }
        for b in baselines {
            switch b {
            case .fp8: out.append(ProtectedCompressor(FP8Codec(), protection: protection))
            case .int8: out.append(ProtectedCompressor(PerTokenIntCodec(bits: 8), protection: protection))
            case .int4: out.append(ProtectedCompressor(PerTokenIntCodec(bits: 4), protection: protection))
            case .kivi2: out.append(ProtectedCompressor(KIVICodec(bits: 2), protection: protection))
            case .kivi4: out.append(ProtectedCompressor(KIVICodec(bits: 4), protection: protection))
            case .evictStrided:
                out += evictionRatios.map { ProtectedCompressor(EvictionCodec(ratio: $0, selection: .strided), protection: protection) }
            case .evictAttention:
                let book = scoreBook
                out += evictionRatios.map {
                    ProtectedCompressor(EvictionCodec(ratio: $0, selection: .scored(name: "attention", scores: { book.scores(for: $0) })),
                                        protection: protection)
                }
            case .dropMiddle: out.append(ProtectedCompressor(DropAllCodec(), protection: protection))
            case .truncation:
                out += try kvtc(main.truncationVariant(), named: "kvtc-truncation")
            case .recipes:
                for recipe in CalibrationRecipe.allCases where recipe != calibration.calibration.recipe {
                    out += try kvtc(recipeProfile(recipe, variant: "kvtc-\(recipe.rawValue)"), named: "kvtc-\(recipe.rawValue)")
                }
            case .noRoPERemoval:
                // The paper's ablations change one thing of the paper's recipe.
                let blind = try profile("kvtc-no-rope", options: paperOptions) { c, o, p in try RoPEBlindCompressor.calibrate(caches: c, options: o, provenance: p, progress: progress) }
                out += try ratios.map { RoPEBlindCompressor(inner: try KVTCCompressor(profile: blind, ratio: $0, protection: protection), rope: model.rope,
                                                             layerAttention: model.layerAttention) }
            case .perLayerPCA:
                let groups = LayerGroupCompressor.perLayer(model.geometry.layers)
                let profiles = try groupProfiles(groups, variant: "per-layer", caches: caches, progress: progress)
                out += try ratios.map { r in
                    LayerGroupCompressor(groups: groups, compressors: try profiles.map { try KVTCCompressor(profile: $0, ratio: r, protection: protection) },
                                         rope: model.rope, method: "kvtc-per-layer-pca")
                }
            case .layerSets:
                let groups = LayerGroupCompressor.layerSets(model.layerAttention)
                guard groups.count > 1 else { continue } // every layer alike: the same as kvtc-paper
                let profiles = try groupProfiles(groups, variant: "layer-sets", caches: caches, progress: progress)
                out += try ratios.map { r in
                    LayerGroupCompressor(groups: groups, compressors: try profiles.map { try KVTCCompressor(profile: $0, ratio: r, protection: protection) },
                                         rope: model.rope, method: "kvtc-layer-sets")
                }
            }
        }
        return out
    }

    /// One profile per group of layers, with the paper's recipe (as the paper's ablations).
    private func groupProfiles(_ groups: [[Int]], variant: String, caches: () throws -> [KVCache],
                               progress: @escaping (String) -> Void) throws -> [Profile] {
        var options = calibration
        options.calibration = paperOptions
        let key = CorpusCalibration.cacheKey(model: model, corpus: corpus, variant: variant, options: options)
        let dir = CorpusCalibration.profileDirectory().appendingPathComponent("\(variant)-\(key)")
        let files = groups.indices.map { dir.appendingPathComponent(groups.count == model.geometry.layers ? "layer\($0).kvtcprofile" : "group\($0).kvtcprofile").path }
        if let loaded = try? files.map({ try Profile(contentsOf: $0) }) { return loaded }
        let c = try caches()
        let profiles = try LayerGroupCompressor.calibrate(caches: c, groups: groups, options: options.calibration,
                                                          provenance: CorpusCalibration.provenance(model: model, corpus: corpus, caches: c, options: options),
                                                          progress: progress)
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for (p, f) in zip(profiles, files) { try? p.write(to: f) }
        return profiles
    }
}
