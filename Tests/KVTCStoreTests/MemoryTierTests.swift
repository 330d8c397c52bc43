import Testing
@testable import KVTCStore

@Suite struct MemoryTierTests {
    @Test func evictsLeastRecentlyUsed() async throws {
        let tier = MemoryTier(budget: 300)
        let (a, b, c, d) = (Fixtures.key(1), Fixtures.key(2), Fixtures.key(3), Fixtures.key(4))
        try await tier.put(a, [UInt8](repeating: 1, count: 100))
        try await tier.put(b, [UInt8](repeating: 2, count: 100))
        try await tier.put(c, [UInt8](repeating: 3, count: 100))
        #expect(try await tier.get(a) == [UInt8](repeating: 1, count: 100)) // a is now most recent
        try await tier.put(d, [UInt8](repeating: 4, count: 100))
        #expect(try await tier.contains(b) == false, "b was least recently used")
        #expect(try await tier.contains([a, b, c, d]) == [true, false, true, true])
        #expect(await tier.byteCount == 300)
        let stats = await tier.stats()
        #expect(stats.evictions == 1 && stats.entries == 3 && stats.hits == 1)
    }

    @Test func replacingAndRemovingKeepsAccounting() async throws {
        let tier = MemoryTier(budget: 1000)
        let a = Fixtures.key(1)
        try await tier.put(a, [1, 2, 3])
        try await tier.put(a, [1, 2])
        #expect(await tier.byteCount == 2)
        try await tier.remove(a)
        #expect(await tier.byteCount == 0)
        #expect(try await tier.get(a) == nil)
    }

    @Test func refusesEntriesLargerThanTheBudget() async throws {
        let tier = MemoryTier(budget: 10)
        await #expect(throws: TierError.entryTooLarge(bytes: 11, capacity: 10)) {
            try await tier.put(Fixtures.key(1), [UInt8](repeating: 0, count: 11))
        }
    }

    @Test func concurrentUseKeepsTheBudget() async throws {
        let tier = MemoryTier(budget: 50_000)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for t in 0..<16 {
                group.addTask {
                    for i in 0..<100 {
                        let k = Fixtures.key(t * 1000 + i % 20)
                        let value = [UInt8](repeating: UInt8(truncatingIfNeeded: t * 31 + i % 20), count: 1000)
                        try await tier.put(k, value)
                        if let got = try await tier.get(k) {
                            #expect(got.allSatisfy { $0 == value[0] })
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(await tier.byteCount <= 50_000)
    }

    @Test func lruOrderDemotesAndOrders() {
        var order = LRUOrder<Int>()
        for i in 0..<5 { order.touch(i) }
        order.touch(0)
        order.demote(3)
        order.remove(2)
        #expect(order.ordered == [3, 1, 4, 0])
        #expect(order.leastRecent == 3)
    }
}

@Suite struct TieredStoreTests {
    @Test func missesFallThroughAndArePromoted() async throws {
        let memory = MemoryTier(budget: 1000)
        let disk = try DiskTier(directory: Fixtures.temporaryDirectory(), quota: 10_000)
        let tiered = TieredStore([memory, disk])
        let k = Fixtures.key(7)
        try await tiered.put(k, [1, 2, 3])
        try await memory.remove(k)
        #expect(try await memory.contains(k) == false)
        #expect(try await tiered.contains(k))
        #expect(try await tiered.get(k) == [1, 2, 3])
        #expect(try await memory.contains(k), "a disk hit is promoted to memory")
        let stats = await tiered.tierStats()
        #expect(stats.map(\.name) == ["memory", "disk"])
        #expect(stats[1].hits == 1)
    }

    @Test func entriesTooLargeForMemoryStillReachDisk() async throws {
        let memory = MemoryTier(budget: 2)
        let disk = try DiskTier(directory: Fixtures.temporaryDirectory(), quota: 10_000)
        let tiered = TieredStore([memory, disk])
        try await tiered.put(Fixtures.key(1), [1, 2, 3])
        #expect(try await tiered.get(Fixtures.key(1)) == [1, 2, 3])
    }
}
