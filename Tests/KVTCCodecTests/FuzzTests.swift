import KVTCNumerics
import Testing
import KVTCTestSupport
import KVTCCache
@testable import KVTCCodec

/// Random mutations of valid files: every one must give a typed error (or, for the
/// unchecksummed safetensors format, a valid cache), never a crash, hang or wrong output.
@Suite struct FuzzTests {
    enum Mutation: CaseIterable { case truncate, flipBit, overwriteByte, insertByte, deleteRange, appendGarbage }

    static func mutate(_ bytes: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var b = bytes
        switch Mutation.allCases.randomElement(using: &rng)! {
        case .truncate:
            b = Array(b.prefix(Int.random(in: 0..<b.count, using: &rng)))
        case .flipBit:
            let i = Int.random(in: 0..<b.count, using: &rng)
            b[i] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
        case .overwriteByte:
            let i = Int.random(in: 0..<b.count, using: &rng)
            var v = UInt8.random(in: 0...255, using: &rng)
            if v == b[i] { v &+= 1 }
            b[i] = v
        case .insertByte:
            b.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...b.count, using: &rng))
        case .deleteRange:
            let i = Int.random(in: 0..<b.count, using: &rng)
            b.removeSubrange(i..<min(b.count, i + Int.random(in: 1...64, using: &rng)))
        case .appendGarbage:
            b += (0..<Int.random(in: 1...32, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        }
        return b
    }

    static let profile = Fixtures.profile(ratios: [8])

    @Test func mutatedBlobsAlwaysFailCleanly() throws {
        let c = try KVTCCompressor(profile: Self.profile, ratio: 8)
        let blob = try c.compress(Fixtures.cache(tokens: 300, seed: 3)).bytes
        var rng = SplitMix64(seed: 42)
        var failures = 0
        for _ in 0..<3000 {
            let m = Self.mutate(blob, &rng)
            do {
                _ = try c.decompress(m)
                Issue.record("a mutated blob decoded")
            } catch {
                failures += 1
            }
        }
        #expect(failures == 3000)
    }

    @Test func mutatedProfilesAlwaysFailCleanly() {
        let bytes = Self.profile.encoded()
        var rng = SplitMix64(seed: 43)
        for _ in 0..<1000 {
            let m = Self.mutate(bytes, &rng)
            #expect(throws: ProfileError.self) { try Profile(bytes: m) }
        }
    }

    @Test func mutatedCacheFilesFailCleanlyOrStayValid() throws {
        let cache = Fixtures.cache(tokens: 40, seed: 5)
        let bytes = KVCacheFile.encode(cache)
        var rng = SplitMix64(seed: 44)
        var rejected = 0
        for _ in 0..<2000 {
            let m = Self.mutate(bytes, &rng)
            do {
                let c = try KVCacheFile.decode(SafetensorsFile(bytes: m))
                // Accepted: then it is a well-formed, finite cache.
                try c.validateFinite()
                #expect(c.keys.count == c.tokenCount * c.geometry.featuresPerToken)
            } catch is SafetensorsError {
                rejected += 1
            } catch is KVCacheFileError {
                rejected += 1
            }
        }
        #expect(rejected > 500)
    }
}
