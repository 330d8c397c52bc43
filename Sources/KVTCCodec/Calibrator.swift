import KVTCCache
import KVTCNumerics

/// Settings of a calibration run.
public struct CalibrationOptions: Sendable {
    /// Nominal ratios to allocate bits for.
    public var ratios: [Double] = [8, 16, 32, 64]
    /// Keep at most this many principal components per stream.
    public var rankCap: Int?
    /// Protected tokens recorded in the profile (and skipped as sinks in calibration).
    public var protection: Protection = .standard
    /// Group sizes the allocator may use.
    public var groupSizes: [Int] = BitPlan.standardGroupSizes
    /// Component types the allocator may use (nil: the recipe's, ``CalibrationRecipe/componentTypes``).
    public var types: [ComponentType]?
    /// How features are scaled before the global PCA: ``CalibrationRecipe/standardWithoutModel``
    /// by default, as calibrating from cache files has no model to measure;
    /// ``CorpusCalibrationOptions`` use ``CalibrationRecipe/standard``.
    public var recipe: CalibrationRecipe = .standardWithoutModel
    /// Per-feature weights of key and value errors (`featuresPerToken` each, positive), which
    /// ``CalibrationRecipe/weighted`` needs: the model's cache sensitivity.
    public var featureWeights: (keys: [Float], values: [Float])?
    /// The keys' share of a ratio's bits (the paper gives each stream the ratio: 0.5).
    /// Measured on SmolLM2-135M at 16x (`kvtc eval --key-share`): 0.3 KL 0.0185, 0.4 0.0170,
    /// 0.5 0.0211; 0.4 by default (README).
    public var keyShare = CalibrationOptions.standardKeyShare
    /// The default ``keyShare``.
    public static let standardKeyShare = 0.4

    public init() {}
}

/// Errors from calibration.
public enum CalibrationError: Error, CustomStringConvertible {
    case noRows
    case missingFeatureWeights(CalibrationRecipe)
    case inconsistent(String)
    case invalidRatio(Double)
    case factorization(FactorizationError)

    public var description: String {
        switch self {
        case .noRows: return "no calibration rows (every cache is shorter than the sink tokens)"
        case .missingFeatureWeights(let r): return "the \(r.rawValue) recipe needs feature weights of the cache's geometry (the model's sensitivity)"
        case .inconsistent(let m): return "calibration caches disagree: \(m)"
        case .invalidRatio(let r): return "ratio \(r) is not in 1...1000"
        case .factorization(let e): return e.description
        }
    }
}

/// Fits a ``Profile`` from calibration rows: PCA per stream, then bit allocation per ratio.
public enum Calibrator {
    /// Calibrates from whole caches (tokens at positions below the sink count are skipped).
    public static func calibrate(caches: [KVCache], options: CalibrationOptions, provenance: Provenance,
                                 progress: ((String) -> Void)? = nil) throws(CalibrationError) -> Profile {
        guard let first = caches.first else { throw .noRows }
        for c in caches {
            guard c.geometry == first.geometry else { throw .inconsistent("geometry \(c.geometry) vs \(first.geometry)") }
            guard c.rope == first.rope else { throw .inconsistent("RoPE settings differ") }
            guard c.layerAttention == first.layerAttention else { throw .inconsistent("per-layer RoPE or attention windows differ") }
        }
        progress?("collecting rows")
        var k = FeatureRows.calibrationRows(caches, skipPositionsBelow: options.protection.sinkTokens, keys: true)
        var v = FeatureRows.calibrationRows(caches, skipPositionsBelow: options.protection.sinkTokens, keys: false)
        var prov = provenance
        prov.rows = k.count
        return try calibrate(keyRows: &k.rows, valueRows: &v.rows, count: k.count, geometry: first.geometry,
                             rope: first.rope, layerAttention: first.layerAttention, options: options, provenance: prov,
                             progress: progress)
    }

    /// Calibrates from feature rows (keys already un-rotated). The row buffers are used as
    /// scratch space.
    public static func calibrate(keyRows: inout [Float], valueRows: inout [Float], count: Int, geometry: KVGeometry,
                                 rope: RoPE, layerAttention: [LayerAttention]? = nil, options: CalibrationOptions,
                                 provenance: Provenance,
                                 progress: ((String) -> Void)? = nil) throws(CalibrationError) -> Profile {
        guard count > 0 else { throw .noRows }
        for r in options.ratios where !(r >= 1 && r <= 1000) { throw .invalidRatio(r) }
        let p = geometry.featuresPerToken
        if options.recipe.usesFeatureWeights {
            guard let w = options.featureWeights, w.keys.count == p, w.values.count == p,
                  (w.keys + w.values).allSatisfy({ $0.isFinite && $0 >= 0 }) else {
                throw .missingFeatureWeights(options.recipe)
            }
        }
        // Both streams' bits per token together are 2 * 16p / ratio; keys get `keyShare` of them.
        let budgetFor = { (ratio: Double, keys: Bool) in
            Int((2 * 16.0 * Double(p) / ratio * (keys ? options.keyShare : 1 - options.keyShare)).rounded(.down))
        }
        // Tokens older than every sliding window keep only the full-context layers: their
        // features (a column subset of the same rows) get their own fit; copied here, before
        // the full rows are scaled and centred in place.
        var windowRows: (layers: [Int], geometry: KVGeometry, keys: [Float], values: [Float])?
        if let attention = layerAttention, let full = OutOfWindowTransforms.fullContextLayers(attention) {
            func gather(_ source: [Float]) -> [Float] {
                source.withUnsafeBufferPointer {
                    FeatureRows.selecting(layers: full, featuresPerLayer: geometry.featuresPerLayer, of: $0.baseAddress!, count: count, stride: p)
                }
            }
            windowRows = (full, KVGeometry(layers: full.count, kvHeads: geometry.kvHeads, headDim: geometry.headDim),
                          gather(keyRows), gather(valueRows))
        }
        var keyFit: (StreamTransform, [(BitPlan, Double)])!
        var valueFit: (StreamTransform, [(BitPlan, Double)])!
        for isKeys in [true, false] {
            let name = isKeys ? "keys" : "values"
            let report: (String) -> Void = { progress?("\(name): \($0)") }
            let budgets = options.ratios.map { budgetFor($0, isKeys) }
            let fit = isKeys
                ? try keyRows.withUnsafeMutableBufferPointer { rows throws(CalibrationError) in
                    try fitStream(rows: rows.baseAddress!, count: count, geometry: geometry, options: options,
                                  weights: options.featureWeights?.keys, budgets: budgets, progress: report)
                }
                : try valueRows.withUnsafeMutableBufferPointer { rows throws(CalibrationError) in
                    try fitStream(rows: rows.baseAddress!, count: count, geometry: geometry, options: options,
                                  weights: options.featureWeights?.values, budgets: budgets, progress: report)
                }
            if isKeys { keyFit = fit } else { valueFit = fit }
        }
        // The out-of-window rows are coded to the full rows' error per feature at each
        // ratio (in the recipe's scaled domain), with no more bits than a full row: the
        // cross-layer redundancy a full row's PCA exploits is not there for a few layers, so
        // the same ratio would leave them several times the error.
        var outOfWindowFit: (layers: [Int], keys: (StreamTransform, [(BitPlan, Double)]), values: (StreamTransform, [(BitPlan, Double)]))?
        if var w = windowRows {
            let pw = w.geometry.featuresPerToken
            var fits: [(StreamTransform, [(BitPlan, Double)])] = []
            for isKeys in [true, false] {
                let name = isKeys ? "keys" : "values"
                let full = isKeys ? keyFit.1 : valueFit.1
                let targets = full.map { $0.1 / Double(p) * Double(pw) }
                let weights = (isKeys ? options.featureWeights?.keys : options.featureWeights?.values).map { weights in
                    weights.withUnsafeBufferPointer {
                        FeatureRows.selecting(layers: w.layers, featuresPerLayer: geometry.featuresPerLayer, of: $0.baseAddress!, count: 1, stride: p)
                    }
                }
                var rows = isKeys ? w.keys : w.values
                if isKeys { w.keys = [] } else { w.values = [] }
                fits.append(try rows.withUnsafeMutableBufferPointer { b throws(CalibrationError) in
                    try fitStream(rows: b.baseAddress!, count: count, geometry: w.geometry, options: options, weights: weights,
                                  budgets: options.ratios.map { budgetFor($0, isKeys) }, errorTargets: targets,
                                  progress: { progress?("\(name) beyond the windows: \($0)") })
                })
            }
            outOfWindowFit = (w.layers, fits[0], fits[1])
        }
        let plans = options.ratios.enumerated().map { i, r in
            RatioPlan(ratio: r, keys: keyFit.1[i].0, values: valueFit.1[i].0,
                      calibrationErrorKeys: keyFit.1[i].1 / Double(count),
                      calibrationErrorValues: valueFit.1[i].1 / Double(count),
                      outOfWindow: outOfWindowFit.map {
                          OutOfWindowPlan(keys: $0.keys.1[i].0, values: $0.values.1[i].0,
                                          calibrationErrorKeys: $0.keys.1[i].1 / Double(count),
                                          calibrationErrorValues: $0.values.1[i].1 / Double(count))
                      })
        }
        let outOfWindow = outOfWindowFit.map { OutOfWindowTransforms(layers: $0.layers, keys: $0.keys.0, values: $0.values.0) }
        var provenance = provenance
        provenance.recipe = options.recipe
        provenance.keyShare = options.keyShare
        return Profile(geometry: geometry, rope: rope, layerAttention: layerAttention, protection: options.protection, keys: keyFit.0,
                       values: valueFit.0, outOfWindow: outOfWindow, plans: plans, provenance: provenance)
    }

    /// PCA of one stream's rows and a plan per budget: the least error within each budget,
    /// or with `errorTargets` (summed over the rows, one per budget) the fewest bits within
    /// the budget that reach the target.
    private static func fitStream(rows: UnsafeMutablePointer<Float>, count: Int, geometry: KVGeometry,
                                  options: CalibrationOptions, weights: [Float]?, budgets: [Int], errorTargets: [Double]? = nil,
                                  progress: @escaping (String) -> Void) throws(CalibrationError) -> (StreamTransform, [(BitPlan, Double)]) {
        let p = geometry.featuresPerToken
        var scale: [Float]? = nil
        if options.recipe.usesFeatureWeights, let weights {
            // Square roots of the weights, floored at a millionth of their mean so that no
            // feature is scaled to zero (reconstruction divides by the scale).
            let mean = weights.reduce(0, +) / Float(p)
            let floor = max(mean * 1e-6, .leastNormalMagnitude)
            scale = weights.map { max($0, floor).squareRoot() }
        }
        if options.recipe.equalizesLayers {
            // Per-layer factor so that every layer block has unit mean variance.
            var s = scale ?? [Float](repeating: 1, count: p)
            let f = geometry.featuresPerLayer
            for l in 0..<geometry.layers {
                var sum = 0.0, sq = 0.0
                for r in 0..<count {
                    for i in 0..<f { let x = Double(rows[r * p + l * f + i] * s[l * f + i]); sum += x; sq += x * x }
                }
                let n = Double(count * f)
                let variance = max(1e-12, sq / n - (sum / n) * (sum / n))
                for i in 0..<f { s[l * f + i] *= Float(1 / variance.squareRoot()) }
            }
            scale = s
        }
        if let s = scale {
            for r in 0..<count { for i in 0..<p { rows[r * p + i] *= s[i] } }
        }
        let basis: PCABasis
        do throws(FactorizationError) {
            basis = try PCABasis.fit(centeringInPlace: rows, count: count, dimension: p, rankCap: options.rankCap,
                                     progress: { progress($0) })
        } catch {
            throw .factorization(error)
        }
        let rank = basis.rank
        progress("projecting \(count) rows onto \(rank) components")
        var coefficients = [Float](repeating: 0, count: count * rank)
        coefficients.withUnsafeMutableBufferPointer { y in
            basis.components.elements.withUnsafeBufferPointer { b in
                BLAS.gemm(.normal, .transposed, m: count, n: rank, k: p, a: rows, lda: p,
                          b: b.baseAddress!, ldb: p, c: y.baseAddress!, ldc: rank)
            }
        }
        progress("measuring group errors")
        let table = coefficients.withUnsafeBufferPointer { y in
            GroupErrorTable.measure(rows: y.baseAddress!, count: count, stride: rank, components: rank,
                                    sizes: options.groupSizes, types: options.types ?? options.recipe.componentTypes)
        }
        // Error of the components beyond the rank, identical for every plan.
        let captured = basis.variances.reduce(0, +)
        let residual = max(0, basis.totalVariance - captured) * Double(count)
        var plans: [(BitPlan, Double)] = []
        for (i, b) in budgets.enumerated() {
            progress("allocating \(b) bits per token")
            let result: (plan: BitPlan, error: Double)
            do throws(BitAllocationError) {
                if let target = errorTargets?[i] {
                    result = try BitAllocator.cheapestPlan(table, errorAtMost: target - residual, budgetBitsPerToken: b)
                } else {
                    result = try BitAllocator.allocate(table, budgetBitsPerToken: b)
                }
            } catch {
                throw .invalidRatio(16 * Double(p) / Double(b))
            }
            plans.append((result.plan, result.error + residual))
        }
        return (StreamTransform(basis: basis, featureScale: scale), plans)
    }
}

/// How a profile scales cached features before the global PCA, which decides what squared
/// error the bit allocator minimises. Profiles record their recipe.
public enum CalibrationRecipe: String, Codable, Sendable, CaseIterable {
    /// The paper's method: features as they are, coefficients as they are.
    case paper
    /// Each layer's block scaled to unit mean variance, so that the allocator does not
    /// starve layers whose features are small.
    case equalized
    /// Each feature scaled by the square root of the model's sensitivity to it (query second
    /// moments for keys, output-projection column energy for values), then each layer's
    /// block to unit mean variance.
    case weighted
    /// Each feature scaled by the square root of its layer's KL divergence per unit of squared
    /// error, measured on the model (noise added to one layer of a real cache at a time),
    /// shared among the layer's features as the `weighted` sensitivities are; no equalization.
    case measured

    /// The recipe of the default profiles and of `calibrate --corpus`: the best measured
    /// (README).
    public static let standard: CalibrationRecipe = .measured
    /// The best recipe that needs no model (calibration from cache files).
    public static let standardWithoutModel: CalibrationRecipe = .equalized

    /// The keys' share of the bits that goes with the recipe: the paper's even split for
    /// ``paper``, else ``CalibrationOptions/standardKeyShare``.
    public var standardKeyShare: Double { self == .paper ? 0.5 : CalibrationOptions.standardKeyShare }

    /// The component types the allocator may use: the paper's for ``paper``, every type
    /// (int3 and int6 too) otherwise.
    public var componentTypes: [ComponentType] { self == .paper ? ComponentType.paperTypes : ComponentType.allCases }

    /// Whether the recipe needs ``CalibrationOptions/featureWeights``.
    public var usesFeatureWeights: Bool { self == .weighted || self == .measured }
    /// Whether the recipe equalizes per-layer variance.
    public var equalizesLayers: Bool { self == .equalized || self == .weighted }
}
