import Foundation
import Testing
import KVTCCache
@testable import KVTCCodec

@Suite struct CalibrationRecipeTests {
    static let caches = (0..<4).map { Fixtures.cache(tokens: 400, seed: UInt64(100 + $0)) }

    static func profile(_ recipe: CalibrationRecipe, weights: (keys: [Float], values: [Float])? = nil) throws -> Profile {
        var o = CalibrationOptions()
        o.ratios = [8, 16]
        o.recipe = recipe
        o.featureWeights = weights
        return try Calibrator.calibrate(caches: caches, options: o, provenance: Provenance(rows: 0, sources: [], model: "synthetic"))
    }

    @Test func profilesRecordTheirRecipeAcrossEncoding() throws {
        let p = Self.caches[0].geometry.featuresPerToken
        let ones = [Float](repeating: 1, count: p)
        for recipe in CalibrationRecipe.allCases {
            let made = try Self.profile(recipe, weights: recipe.usesFeatureWeights ? (ones, ones) : nil)
            let read = try Profile(bytes: made.encoded())
            #expect(read.provenance.recipe == recipe)
            #expect((read.keys.featureScale != nil) == (recipe != .paper))
            #expect(read.contentHash == made.contentHash)
        }
    }

    @Test func profilesWithoutARecordedRecipeStillRead() throws {
        // Profiles made before recipes were recorded have no `recipe` in their provenance.
        var provenance = Provenance(rows: 0, sources: [], model: "synthetic")
        provenance.recipe = nil
        let made = try Self.profile(.paper)
        let old = Profile(geometry: made.geometry, rope: made.rope, layerAttention: nil, protection: made.protection, keys: made.keys,
                          values: made.values, plans: made.plans, provenance: provenance)
        #expect(String(decoding: old.encoded().prefix(4096), as: UTF8.self).contains("recipe") == false)
        #expect(try Profile(bytes: old.encoded()).provenance.recipe == nil)
    }

    @Test func unitWeightsGiveTheEqualizedProfile() throws {
        let p = Self.caches[0].geometry.featuresPerToken
        let ones = [Float](repeating: 1, count: p)
        let weighted = try Self.profile(.weighted, weights: (ones, ones))
        let equalized = try Self.profile(.equalized)
        #expect(weighted.keys.featureScale == equalized.keys.featureScale)
        #expect(weighted.plans.map(\.keys) == equalized.plans.map(\.keys))
        #expect(weighted.plans.map(\.values) == equalized.plans.map(\.values))
    }

    @Test func weightedRecipesNeedWeightsOfTheGeometry() {
        #expect(throws: CalibrationError.self) { try Self.profile(.weighted) }
        #expect(throws: CalibrationError.self) { try Self.profile(.weighted, weights: ([1, 2], [1, 2])) }
    }

    @Test func featureWeightsSteerWhatTheProfileReconstructsBest() throws {
        // Weigh half of the first layer's key features 100x. The weighted profile's feature
        // scale squared is the error metric it minimises (weights, then layer equalization);
        // on held-out caches it must reconstruct better than the unweighted profile under
        // that metric, and worse under the unweighted profile's own metric.
        let g = Self.caches[0].geometry
        let p = g.featuresPerToken, f = g.featuresPerLayer
        var heavy = [Float](repeating: 1, count: p)
        for i in 0..<(f / 2) { heavy[i] = 100 }
        let ones = [Float](repeating: 1, count: p)
        let plain = try Self.profile(.weighted, weights: (ones, ones))
        let weighted = try Self.profile(.weighted, weights: (heavy, ones))
        let cache = Fixtures.cache(tokens: 600, seed: 7)
        func keyError(_ profile: Profile, metric: [Float]) throws -> Double {
            let c = try KVTCCompressor(profile: profile, ratio: 8)
            let restored = try c.decompress(try c.compress(cache).bytes)
            var e = 0.0
            for t in 4..<472 {
                for i in 0..<p { let d = Double(restored.keys[t * p + i] - cache.keys[t * p + i]) * Double(metric[i]); e += d * d }
            }
            return e
        }
        let wMetric = try #require(weighted.keys.featureScale), uMetric = try #require(plain.keys.featureScale)
        #expect(try keyError(weighted, metric: wMetric) < keyError(plain, metric: wMetric))
        #expect(try keyError(plain, metric: uMetric) < keyError(weighted, metric: uMetric))
    }

    @Test func keyShareSplitsEachRatiosBitsBetweenTheStreams() throws {
        let p = Self.caches[0].geometry.featuresPerToken
        var keyBits: [Int] = []
        for share in [0.3, 0.5, 0.7] {
            var o = CalibrationOptions()
            o.ratios = [16]
            o.keyShare = share
            let profile = try Calibrator.calibrate(caches: Self.caches, options: o, provenance: Provenance(rows: 0, sources: [], model: "synthetic"))
            let plan = try profile.plan(ratio: 16)
            let total = 2 * 16 * p / 16
            #expect(plan.keys.bitsPerToken + plan.values.bitsPerToken <= total)
            #expect(plan.keys.bitsPerToken <= Int(Double(total) * share))
            #expect(plan.values.bitsPerToken <= Int(Double(total) * (1 - share)))
            keyBits.append(plan.keys.bitsPerToken)
        }
        #expect(keyBits[0] < keyBits[1] && keyBits[1] < keyBits[2], "\(keyBits)")
    }
}
