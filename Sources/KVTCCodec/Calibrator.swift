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
    /// Component types the allocator may use.
    public var types: [ComponentType] = ComponentType.allCases
    /// Scale each layer's block of features to equal variance before the global PCA (an
    /// option beyond the paper: otherwise the allocator starves low-variance layers).
    public var equalizeLayerVariance = false

    public init() {}
}

/// Errors from calibration.
public enum CalibrationError: Error, CustomStringConvertible {
    case noRows
    case inconsistent(String)
    case invalidRatio(Double)
    case factorization(FactorizationError)

    public var description: String {
        switch self {
        case .noRows: return "no calibration rows (every cache is shorter than the sink tokens)"
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
        }
        progress?("collecting rows")
        var k = FeatureRows.calibrationRows(caches, skipPositionsBelow: options.protection.sinkTokens, keys: true)
        var v = FeatureRows.calibrationRows(caches, skipPositionsBelow: options.protection.sinkTokens, keys: false)
        var prov = provenance
        prov.rows = k.count
        return try calibrate(keyRows: &k.rows, valueRows: &v.rows, count: k.count, geometry: first.geometry,
                             rope: first.rope, options: options, provenance: prov, progress: progress)
    }

    /// Calibrates from feature rows (keys already un-rotated). The row buffers are used as
    /// scratch space.
    public static func calibrate(keyRows: inout [Float], valueRows: inout [Float], count: Int, geometry: KVGeometry,
                                 rope: RoPE, options: CalibrationOptions, provenance: Provenance,
                                 progress: ((String) -> Void)? = nil) throws(CalibrationError) -> Profile {
        guard count > 0 else { throw .noRows }
        for r in options.ratios where !(r >= 1 && r <= 1000) { throw .invalidRatio(r) }
        let p = geometry.featuresPerToken
        let budgetFor = { (ratio: Double) in Int((16.0 * Double(p) / ratio).rounded(.down)) }
        var keyFit: (StreamTransform, [(BitPlan, Double)])!
        var valueFit: (StreamTransform, [(BitPlan, Double)])!
        for isKeys in [true, false] {
            let name = isKeys ? "keys" : "values"
            let report: (String) -> Void = { progress?("\(name): \($0)") }
            let budgets = options.ratios.map(budgetFor)
            let fit = isKeys
                ? try keyRows.withUnsafeMutableBufferPointer { rows throws(CalibrationError) in
                    try fitStream(rows: rows.baseAddress!, count: count, geometry: geometry, options: options,
                                  budgets: budgets, progress: report)
                }
                : try valueRows.withUnsafeMutableBufferPointer { rows throws(CalibrationError) in
                    try fitStream(rows: rows.baseAddress!, count: count, geometry: geometry, options: options,
                                  budgets: budgets, progress: report)
                }
            if isKeys { keyFit = fit } else { valueFit = fit }
        }
        let plans = options.ratios.enumerated().map { i, r in
            RatioPlan(ratio: r, keys: keyFit.1[i].0, values: valueFit.1[i].0,
                      calibrationErrorKeys: keyFit.1[i].1 / Double(count),
                      calibrationErrorValues: valueFit.1[i].1 / Double(count))
        }
        return Profile(geometry: geometry, rope: rope, protection: options.protection, keys: keyFit.0,
                       values: valueFit.0, plans: plans, provenance: provenance)
    }

    private static func fitStream(rows: UnsafeMutablePointer<Float>, count: Int, geometry: KVGeometry,
                                  options: CalibrationOptions, budgets: [Int],
                                  progress: @escaping (String) -> Void) throws(CalibrationError) -> (StreamTransform, [(BitPlan, Double)]) {
        let p = geometry.featuresPerToken
        var scale: [Float]? = nil
        if options.equalizeLayerVariance {
            // Per-layer scale so that every layer block has unit mean variance.
            let f = geometry.featuresPerLayer
            var s = [Float](repeating: 1, count: p)
            for l in 0..<geometry.layers {
                var sum = 0.0, sq = 0.0
                for r in 0..<count { for i in 0..<f { let x = Double(rows[r * p + l * f + i]); sum += x; sq += x * x } }
                let n = Double(count * f)
                let variance = max(1e-12, sq / n - (sum / n) * (sum / n))
                for i in 0..<f { s[l * f + i] = Float(1 / variance.squareRoot()) }
            }
            for r in 0..<count { for i in 0..<p { rows[r * p + i] *= s[i] } }
            scale = s
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
                                    sizes: options.groupSizes, types: options.types)
        }
        // Error of the components beyond the rank, identical for every plan.
        let captured = basis.variances.reduce(0, +)
        let residual = max(0, basis.totalVariance - captured) * Double(count)
        var plans: [(BitPlan, Double)] = []
        for b in budgets {
            progress("allocating \(b) bits per token")
            let result: (plan: BitPlan, error: Double)
            do throws(BitAllocationError) { result = try BitAllocator.allocate(table, budgetBitsPerToken: b) } catch {
                throw .invalidRatio(16 * Double(p) / Double(b))
            }
            plans.append((result.plan, result.error + residual))
        }
        return (StreamTransform(basis: basis, featureScale: scale), plans)
    }
}
