import Crypto
import Foundation
import KVTCCache
import KVTCCodec
import KVTCModels
import KVTCNumerics

/// Settings for calibrating from text.
public struct CorpusCalibrationOptions: Sendable {
    /// Calibration tokens to collect (rows per stream, before sinks are skipped).
    public var tokens = 32768
    /// Longest document window run through the model at once.
    public var windowTokens = 2048
    /// Shortest window used while longer material is available.
    public var minimumWindowTokens = 1024
    /// What the fit itself does (ratios, rank cap, layer scaling...).
    public var calibration = CalibrationOptions()
    /// Windows of calibration text the measured recipe perturbs, and continuation tokens it
    /// scores per window (3 x 64: about 20 s here).
    public var sensitivityWindows = 3
    public var sensitivityTokens = 64

    public init() {}
}

/// Calibration that starts from plain text: the model produces the caches, no files are
/// written in between.
public enum CorpusCalibration {
    /// Runs the model over `documents` (BOS + consecutive windows of each document) until
    /// about `tokens` tokens are cached, and returns the caches.
    public static func caches(model: any LanguageModel, documents: [Corpus.Document], options: CorpusCalibrationOptions,
                              progress: (String) -> Void = { _ in }) throws -> [KVCache] {
        try run(model: model, documents: documents, options: options, progress: progress).caches
    }

    /// What running the model over calibration text gives: the caches, and the model's
    /// sensitivity to errors in each cached feature measured on the same queries.
    public struct Run {
        public var caches: [KVCache]
        public var sensitivity: CacheSensitivity
        /// The token windows the caches were made from (BOS first).
        public var windows: [[Int]]
    }

    /// Runs the model over `documents` as ``caches(model:documents:options:progress:)``
    /// does, also recording its queries.
    ///
    /// Calibration always runs the model on its f32 reference path (``LanguageModel/atPrecision(_:)``),
    /// so a profile does not depend on the machine's backend: the measured recipe divides
    /// KL differences of ~1e-3 by the noise it adds, and bfloat16's rounding, which moves
    /// any two runs apart by a KL of ~5e-4, flattened the layer weights it measured (README).
    public static func run(model: any LanguageModel, documents: [Corpus.Document], options: CorpusCalibrationOptions,
                           progress: (String) -> Void = { _ in }) throws -> Run {
        let model = try model.atPrecision(.f32)
        var windows: [[Int]] = []
        var total = 0
        var short: [[Int]] = []
        for d in documents {
            let ids = model.tokenizer.encode(d.text)
            var o = 0
            while o < ids.count {
                let w = Array(ids[o..<min(ids.count, o + options.windowTokens - 1)])
                o += w.count
                if w.count + 1 >= options.minimumWindowTokens { windows.append(w) } else { short.append(w) }
            }
        }
        // Long windows first; short ones only if the long ones do not reach the target.
        var chosen: [[Int]] = []
        for w in windows + short where total < options.tokens {
            chosen.append(w)
            total += w.count + 1
        }
        let d = model.dimensions
        let observer = AttentionObserver(tokens: 0, queryLayers: d.layers, queryWidth: d.heads * d.headDim)
        var caches: [KVCache] = []
        var done = 0
        for w in chosen {
            progress("running the model over calibration text: \(done)/\(total) tokens")
            var cache = model.makeCache(reservingCapacity: w.count + 1)
            _ = try model.hiddenStates(tokens: [model.tokenizer.bosID ?? 1] + w, cache: &cache, startPosition: nil,
                                       rows: .none, observer: observer)
            caches.append(cache)
            done += w.count + 1
        }
        return Run(caches: caches, sensitivity: model.cacheSensitivity(queryMeanSquares: observer.queryMeanSquares),
                   windows: chosen.map { [model.tokenizer.bosID ?? 1] + $0 })
    }

    /// Fits a profile from the corpus's calibration part.
    public static func calibrate(model: any LanguageModel, corpus: Corpus, options: CorpusCalibrationOptions,
                                 progress: @escaping (String) -> Void = { _ in }) throws -> Profile {
        let run = try run(model: model, documents: corpus.calibration, options: options, progress: progress)
        return try calibrate(run, model: model, corpus: corpus, options: options, progress: progress)
    }

    /// Fits a profile from a calibration run (the model's sensitivity weighs features when the
    /// recipe asks for it).
    public static func calibrate(_ run: Run, model: any LanguageModel, corpus: Corpus, options: CorpusCalibrationOptions,
                                 progress: @escaping (String) -> Void = { _ in }) throws -> Profile {
        var o = options.calibration
        switch o.recipe {
        case .weighted: o.featureWeights = (run.sensitivity.keys, run.sensitivity.values)
        case .measured:
            // Windows of up to 1024 context + the continuation tokens of calibration text.
            let scored = options.sensitivityTokens + 1
            let windows = run.windows.filter { $0.count >= 256 + scored }.prefix(options.sensitivityWindows).map {
                let context = min(1024, $0.count - scored)
                return LayerSensitivity.Window(context: Array($0[0..<context]), continuation: Array($0[context..<(context + scored)]))
            }
            guard !windows.isEmpty else {
                throw CalibrationError.inconsistent("the measured recipe needs calibration windows of at least \(256 + scored) tokens")
            }
            let layers = try LayerSensitivity.measure(model: try model.atPrecision(.f32), windows: Array(windows),
                                                      protection: o.protection, progress: progress)
            o.featureWeights = layers.featureWeights(geometry: model.geometry, within: run.sensitivity)
        case .paper, .equalized: break
        }
        return try Calibrator.calibrate(caches: run.caches, options: o,
                                        provenance: provenance(model: model, corpus: corpus, caches: run.caches, options: options),
                                        progress: progress)
    }

    public static func provenance(model: any LanguageModel, corpus: Corpus, caches: [KVCache], options: CorpusCalibrationOptions) -> Provenance {
        Provenance(rows: 0, sources: [.init(name: "corpus/calibration", sha256: corpus.hash, tokens: caches.reduce(0) { $0 + $1.tokenCount })],
                   model: model.identity, rankCap: options.calibration.rankCap)
    }

    /// Where cached profiles live: `$KVTC_CACHE_DIR/profiles` or `~/.cache/kvtc/profiles`.
    public static func profileDirectory() -> URL {
        ModelStore.defaultCacheDirectory().appendingPathComponent("profiles")
    }

    /// A key for a cached profile: model identity, corpus hash, variant and options.
    public static func cacheKey(model: any LanguageModel, corpus: Corpus, variant: String, options: CorpusCalibrationOptions) -> String {
        let c = options.calibration
        let text = [model.identity, corpus.hash, variant, "\(options.tokens)", "\(options.windowTokens)",
                    c.ratios.map { "\($0)" }.joined(separator: ","), "\(c.rankCap ?? 0)", c.recipe.rawValue, "keys \(c.keyShare)", "\(c.types ?? c.recipe.componentTypes)",
                    options.sensitivityWindows == 3 && options.sensitivityTokens == 64 ? "" : "sensitivity \(options.sensitivityWindows)x\(options.sensitivityTokens)",
                    "\(c.protection.sinkTokens)", "\(c.groupSizes)", "v\(profileGeneration(model))"].joined(separator: "|")
        return hexString(Array(SHA256.hash(data: Array(text.utf8)).prefix(12)))
    }

    /// The last profile format version that changed what calibration makes for `model`:
    /// version 3 added out-of-window transforms, which only models with both sliding-window
    /// and full-context layers get, so other models keep their cached profiles (keyed 2).
    static func profileGeneration(_ model: any LanguageModel) -> Int {
        OutOfWindowTransforms.fullContextLayers(model.layerAttention) == nil ? 2 : Profile.formatVersion
    }

    /// Loads a cached profile for `key`, or builds it with `make` and caches it.
    public static func cachedProfile(key: String, variant: String, progress: (String) -> Void,
                                     make: () throws -> Profile) throws -> Profile {
        let dir = profileDirectory()
        let url = dir.appendingPathComponent("\(variant)-\(key).kvtcprofile")
        if let data = FileManager.default.contents(atPath: url.path), let p = try? Profile(bytes: [UInt8](data)) {
            return p
        }
        progress("building the \(variant) profile (cached afterwards in \(dir.path))")
        let p = try make()
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try? p.write(to: url.path)
        return p
    }

    /// The default profile of a model: KVTC with the standard recipe at 4, 8, 16, 32 and 64x
    /// from the bundled corpus, built on first use and cached.
    public static func defaultProfile(model: any LanguageModel, corpus: Corpus, options: CorpusCalibrationOptions = .standard,
                                      progress: @escaping (String) -> Void = { _ in }) throws -> Profile {
        let key = cacheKey(model: model, corpus: corpus, variant: "kvtc", options: options)
        return try cachedProfile(key: key, variant: "kvtc", progress: progress) {
            try calibrate(model: model, corpus: corpus, options: options, progress: progress)
        }
    }
}

extension CorpusCalibrationOptions {
    /// Defaults: 32K tokens, ratios 4...64, the standard recipe.
    public static var standard: CorpusCalibrationOptions {
        var o = CorpusCalibrationOptions()
        o.calibration.ratios = [4, 8, 16, 32, 64]
        o.calibration.recipe = .standard
        return o
    }
}
