import Foundation
import Testing
import KVTCCodec
import KVTCModel
import KVTCStore
@testable import KVTCServer

/// Opt-in timing (`KVTC_TIMING=1`): restoring a long context from the store vs recomputing
/// it. With `KVTC_PROFILE=path` the KVTC store is timed too. The benchmark proper is
/// `kvtc bench serve`.
@Suite struct RestoreTimingTests {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["KVTC_TIMING"] == "1"))
    func restoreVersusRecompute() async throws {
        let model = try SharedModel.get()
        let n = Int(ProcessInfo.processInfo.environment["KVTC_TIMING_TOKENS"] ?? "") ?? 4096
        let ids = (0..<n).map { 1000 + ($0 * 7919) % 30000 }
        let engine = InferenceEngine(model: model, store: nil)
        let cache = try await engine.computeCache(tokens: ids)
        let recompute = try await engine.recomputeSeconds(tokens: ids)
        var stores: [(String, CacheStore)] = [("exact fp16", try StoreFactory.exactStore(model: model, tiers: [MemoryTier(budget: 1 << 34)]))]
        if let path = ProcessInfo.processInfo.environment["KVTC_PROFILE"] {
            let profile = try Profile(contentsOf: path)
            stores.append(("kvtc 16x", try StoreFactory.kvtcStore(model: model, profile: profile, ratio: 16, tiers: [MemoryTier(budget: 1 << 34)],
                                                                  configuration: StoreConfiguration(tailPrecision: .fp16))))
        }
        print("recompute \(n) tokens: \(recompute) s")
        for (name, store) in stores {
            let receipt = try await store.store(tokens: ids, cache: cache)
            let restored = try #require(await store.restore(tokens: ids))
            #expect(restored.matchedTokens == n)
            print("\(name): stored \(receipt.bytesWritten) bytes in \(receipt.seconds) s; restored in \(restored.seconds) s (\(recompute / restored.seconds)x faster than recompute)")
        }
    }
}
