import Testing
@testable import KVTCModels

@Suite struct SamplerTests {
    let logits: [Float] = [0.1, 2.0, -1.0, 1.9, 0.0]

    @Test func greedyIsArgmax() {
        var s = Sampler(.greedy)
        #expect(s.sample(logits) == 1)
        #expect(Sampler.argmax([3, 3, 1]) == 0) // first on ties
    }

    @Test func topKOneIsGreedy() {
        var s = Sampler(SamplingOptions(temperature: 5, topK: 1, seed: 9))
        for _ in 0..<20 { #expect(s.sample(logits) == 1) }
    }

    @Test func seededSamplingIsReproducibleAndFollowsTheDistribution() {
        var a = Sampler(SamplingOptions(temperature: 1, seed: 42))
        var b = Sampler(SamplingOptions(temperature: 1, seed: 42))
        let xs = (0..<2000).map { _ in a.sample(logits) }
        let ys = (0..<2000).map { _ in b.sample(logits) }
        #expect(xs == ys)
        // p(1) = e^2 / sum ~ 0.447 (893 of 2000, sd ~22), p(2) ~ 0.022 (44).
        let ones = xs.filter { $0 == 1 }.count, twos = xs.filter { $0 == 2 }.count
        #expect(ones > 800 && ones < 990)
        #expect(twos < 100)
    }

    @Test func topPKeepsTheNucleus() {
        var s = Sampler(SamplingOptions(temperature: 1, topP: 0.5, seed: 1))
        // Tokens 1 and 3 hold ~0.447 + ~0.404 of the mass; the nucleus for 0.5 is {1, 3}.
        for _ in 0..<200 { #expect([1, 3].contains(s.sample(logits))) }
    }
}
