import Foundation
import KVTCCache
import KVTCTestSupport
import KVTCCodec
@testable import KVTCStore


enum Fixtures {
    static let geometry = KVGeometry(layers: 2, kvHeads: 2, headDim: 8)
    static let rope = RoPE(layout: .interleaved, theta: 10000, rotaryDims: 8)

    /// A low-rank-plus-noise cache at positions `0..<tokens` (values not fp16-exact).
    static func cache(tokens: Int, seed: UInt64) -> KVCache {
        SyntheticCacheBuilder(geometry: geometry, rope: rope, factors: 6, mixingSeed: 99, noise: 0.01,
                              valueFactorShift: 2, roundsToFP16: false)
            .cache(tokens: tokens, seed: seed)
    }

    static let profile: Profile = {
        let caches = (0..<3).map { cache(tokens: 300, seed: UInt64(500 + $0)) }
        var options = CalibrationOptions()
        options.ratios = [4]
        return try! Calibrator.calibrate(caches: caches, options: options,
                                         provenance: Provenance(rows: 0, sources: [], model: "synthetic"))
    }()

    static let identity = ProducerIdentity(modelHash: String(repeating: "ab", count: 32), profile: profile, ratio: 4)

    static func tokens(_ count: Int, seed: Int) -> [Int] { (0..<count).map { ($0 * 7919 + seed * 104_729) % 49_152 } }

    /// A store over `tier` with small chunks (32 tokens, 16 recent).
    static func store(tier: any CacheTier, identity: ProducerIdentity = identity,
                      configuration: StoreConfiguration = StoreConfiguration(chunkTokens: 32, recentTokens: 16)) -> CacheStore {
        try! CacheStore(identity: identity, codec: try! CacheStore.kvtcChunkCodec(profile: profile, ratio: 4),
                        tier: tier, configuration: configuration, shape: CacheShape(geometry: geometry, rope: rope))
    }

    /// Whether two decodings of the same entries agree: same tokens and positions, values
    /// equal to within 1e-5 of the largest magnitude. Not bit-for-bit: the reconstruction is
    /// an sgemm whose summation order depends on how many threads OpenBLAS uses, and a forward
    /// pass running concurrently in the same process (another suite) switches that count.
    static func sameDecoding(_ a: KVCache, _ b: KVCache) -> Bool {
        guard a.geometry == b.geometry, a.positions == b.positions, a.keys.count == b.keys.count else { return false }
        let scale = max(b.keys.map(abs).max() ?? 0, b.values.map(abs).max() ?? 0, 1e-30)
        for i in a.keys.indices {
            guard abs(a.keys[i] - b.keys[i]) <= 1e-5 * scale, abs(a.values[i] - b.values[i]) <= 1e-5 * scale else { return false }
        }
        return true
    }

    /// What the codec alone gives for `cache` with `recent` protected tokens.
    static func codecAlone(_ cache: KVCache, recent: Int) -> KVCache {
        let c = try! KVTCCompressor(profile: profile, ratio: 4, protection: Protection(sinkTokens: 4, recentTokens: recent))
        return try! c.decompress(c.compress(cache).bytes)
    }

    static func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        var m: Float = 0
        for i in a.indices { m = max(m, abs(a[i] - b[i])) }
        return m
    }

    struct MissingExecutable: Error, CustomStringConvertible {
        var description: String
    }

    /// An executable of this package's build, found next to the test bundle (`swift build
    /// --build-tests` builds every target).
    static func builtExecutable(_ name: String) throws -> URL {
        let runner = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        let places = [runner.deletingLastPathComponent(), Bundle.main.bundleURL]
        for place in places {
            let url = place.appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        throw MissingExecutable(description: "\(name) is not built next to the tests (looked in \(places.map(\.path))); run swift build --build-tests")
    }

    static func temporaryDirectory() -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("kvtc-store-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    static func key(_ i: Int) -> StoreKey {
        KeyChain(identity: identity, chunkTokens: 4).key(kind: .chunk, anchor: .root, start: 0, tokens: [i])
    }
}
