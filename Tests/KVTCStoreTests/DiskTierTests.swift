import KVTCNumerics
import Foundation
import Testing
import KVTCTestSupport
@testable import KVTCStore

@Suite struct DiskTierTests {
    let header = SealedEntry.headerSize

    func file(_ dir: URL, _ key: StoreKey) -> URL { DiskTier.entriesDirectory(in: dir).appendingPathComponent(DiskTier.fileName(key)) }

    @Test func storesAndRebuildsItsIndexOnRestart() async throws {
        let dir = Fixtures.temporaryDirectory()
        do {
            let tier = try DiskTier(directory: dir, quota: 100_000)
            for i in 0..<5 { try await tier.put(Fixtures.key(i), [UInt8](repeating: UInt8(i), count: 100 + i)) }
            #expect(await tier.byteCount == (0..<5).reduce(0) { $0 + 100 + $1 + header })
        }
        let reopened = try DiskTier(directory: dir, quota: 100_000)
        #expect(await reopened.stats().entries == 5)
        for i in 0..<5 { #expect(try await reopened.get(Fixtures.key(i)) == [UInt8](repeating: UInt8(i), count: 100 + i)) }
        #expect(try await reopened.get(Fixtures.key(9)) == nil)
    }

    @Test func enforcesTheQuotaAlsoAfterRestart() async throws {
        let dir = Fixtures.temporaryDirectory()
        let entry = 1000 + header
        do {
            let tier = try DiskTier(directory: dir, quota: 10 * entry)
            for i in 0..<10 {
                try await tier.put(Fixtures.key(i), [UInt8](repeating: 7, count: 1000))
                try await Task.sleep(for: .milliseconds(15)) // distinct modification times
            }
            _ = try await tier.get(Fixtures.key(0)) // 0 becomes most recent (mtime refreshed)
            try await tier.put(Fixtures.key(10), [UInt8](repeating: 7, count: 1000))
            #expect(try await tier.contains(Fixtures.key(1)) == false, "the least recently used entry was evicted")
            #expect(await tier.byteCount <= 10 * entry)
        }
        // Reopen with a smaller quota: the oldest entries go, the most recent stay.
        let small = try DiskTier(directory: dir, quota: 3 * entry + 10)
        #expect(await small.byteCount <= 3 * entry + 10)
        #expect(await small.stats().entries == 3)
        #expect(try await small.contains(Fixtures.key(10)))
        #expect(try await small.contains(Fixtures.key(0)))
        let files = try FileManager.default.contentsOfDirectory(atPath: DiskTier.entriesDirectory(in: dir).path).filter { $0.hasSuffix(".kve") }
        #expect(files.count == 3, "evicted files are deleted")
    }

    @Test func corruptTruncatedAndDeletedEntriesAreNeverServed() async throws {
        let dir = Fixtures.temporaryDirectory()
        let tier = try DiskTier(directory: dir, quota: 1 << 20)
        let value = (0..<4000).map { UInt8(truncatingIfNeeded: $0 * 13) }
        for i in 0..<4 { try await tier.put(Fixtures.key(i), value) }
        // Flip one payload byte of entry 0.
        var bytes = try [UInt8](Data(contentsOf: file(dir, Fixtures.key(0))))
        bytes[header + 1234] ^= 0x40
        try Data(bytes).write(to: file(dir, Fixtures.key(0)))
        // Truncate entry 1.
        let h = try FileHandle(forWritingTo: file(dir, Fixtures.key(1)))
        try h.truncate(atOffset: UInt64(header + 100))
        try h.close()
        // Delete entry 2.
        try FileManager.default.removeItem(at: file(dir, Fixtures.key(2)))
        // Replace entry 3 with a valid file of another key.
        try FileManager.default.removeItem(at: file(dir, Fixtures.key(3)))
        try await tier.put(Fixtures.key(5), value)
        try FileManager.default.copyItem(at: file(dir, Fixtures.key(5)), to: file(dir, Fixtures.key(3)))

        for i in 0..<4 { #expect(try await tier.get(Fixtures.key(i)) == nil, "entry \(i)") }
        #expect(try await tier.get(Fixtures.key(5)) == value)
        let stats = await tier.stats()
        #expect(stats.corruptDropped == 3)
        #expect(stats.vanished == 1)
        #expect(stats.entries == 1)
        #expect(!FileManager.default.fileExists(atPath: file(dir, Fixtures.key(0)).path), "corrupt files are removed")
        #expect(await tier.byteCount == value.count + header)
    }

    @Test func aWriterKilledMidWriteNeverServes() async throws {
        let dir = Fixtures.temporaryDirectory()
        let value = [UInt8](repeating: 3, count: 5000)
        do {
            let tier = try DiskTier(directory: dir, quota: 1 << 20)
            try await tier.put(Fixtures.key(1), value)
        }
        // A writer died before its rename: a temporary file is left behind.
        let full = SealedEntry.encode(key: Fixtures.key(2), value: value)
        let temp = DiskTier.entriesDirectory(in: dir).appendingPathComponent(".\(Fixtures.key(2).hex).123.tmp")
        try Data(full.prefix(2000)).write(to: temp)
        // A non-atomic writer died mid-write under the final name: a partial file.
        try Data(full.prefix(3000)).write(to: file(dir, Fixtures.key(3)))
        // Garbage under an entry name.
        try Data([1, 2, 3]).write(to: file(dir, Fixtures.key(4)))

        let tier = try DiskTier(directory: dir, quota: 1 << 20)
        let stats = await tier.stats()
        #expect(stats.orphansRemoved == 1)
        #expect(stats.corruptDropped == 2)
        #expect(stats.entries == 1)
        #expect(!FileManager.default.fileExists(atPath: temp.path))
        #expect(try await tier.get(Fixtures.key(2)) == nil)
        #expect(try await tier.get(Fixtures.key(3)) == nil)
        #expect(try await tier.get(Fixtures.key(4)) == nil)
        #expect(try await tier.get(Fixtures.key(1)) == value)
    }

    /// A real writer process (`KVTCDiskWriter`) rewrites entries of 0.25-2 MB until it is
    /// killed with SIGKILL at a random moment; the reopened tier must hold one complete,
    /// consistent entry for every key and clean up what the writer left behind.
    @Test func aWriterProcessKilledMidWriteNeverLeavesAPartialEntry() async throws {
        let writer = try Fixtures.builtExecutable("KVTCDiskWriter")
        let dir = Fixtures.temporaryDirectory()
        let keys = 12
        var rng = SplitMix64(seed: 2026)
        var orphans = 0
        for round in 0..<10 {
            let process = Process()
            process.executableURL = writer
            process.arguments = [dir.path, String(keys)]
            let output = Pipe()
            process.standardOutput = output
            try process.run()
            let pid = process.processIdentifier
            // Never wait forever on a writer that does not get going.
            let watchdog = DispatchWorkItem { kill(pid, SIGKILL) }
            DispatchQueue.global().asyncAfter(deadline: .now() + 30, execute: watchdog)
            let line = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
            #expect(line.hasPrefix("ready"), "round \(round): the writer said \(line.debugDescription)")
            usleep(UInt32.random(in: 5_000...150_000, using: &rng))
            kill(pid, SIGKILL)
            process.waitUntilExit()
            watchdog.cancel()
            #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGKILL)

            let tier = try DiskTier(directory: dir, quota: 1 << 36)
            let stats = await tier.stats()
            orphans += stats.orphansRemoved
            #expect(stats.corruptDropped == 0, "an entry under its final name was incomplete")
            #expect(stats.entries == keys)
            for k in 0..<keys {
                let key = StoreKey(bytes: [UInt8(k)] + [UInt8](repeating: 0xA5, count: 31))!
                let value = try #require(try await tier.get(key), "round \(round): key \(k) lost")
                try #require(value.count >= 24)
                func word(_ i: Int) -> Int { value[(8 * i)..<(8 * i + 8)].reversed().reduce(0) { $0 << 8 | Int($1) } }
                let generation = word(1), length = word(2)
                #expect(word(0) == k && value.count == 24 + length)
                let fill = UInt8((k * 31 + generation * 17) & 0xFF)
                #expect(value[24...].allSatisfy { $0 == fill }, "round \(round): key \(k) generation \(generation) is inconsistent")
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: DiskTier.entriesDirectory(in: dir).path).allSatisfy { !$0.hasSuffix(".tmp") })
        }
        // The kills landed mid-write: the writer left temporary files that were cleaned up.
        #expect(orphans > 0)
    }

    @Test func aPartialFileAppearingUnderARunningStoreIsNotServed() async throws {
        let dir = Fixtures.temporaryDirectory()
        let tier = try DiskTier(directory: dir, quota: 1 << 20)
        let value = [UInt8](repeating: 9, count: 3000)
        try await tier.put(Fixtures.key(1), value)
        // Simulate a crash of a second, non-atomic writer rewriting the entry in place.
        let full = SealedEntry.encode(key: Fixtures.key(1), value: value)
        try Data(full.prefix(1500)).write(to: file(dir, Fixtures.key(1)))
        #expect(try await tier.get(Fixtures.key(1)) == nil)
    }

    @Test func concurrentPutsAndGets() async throws {
        let tier = try DiskTier(directory: Fixtures.temporaryDirectory(), quota: 40 * (500 + header))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for t in 0..<8 {
                group.addTask {
                    for i in 0..<30 {
                        let k = Fixtures.key(t * 100 + i % 10)
                        let value = [UInt8](repeating: UInt8(t * 10 + i % 10), count: 500)
                        try await tier.put(k, value)
                        if let got = try await tier.get(k) { #expect(got == value) }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(await tier.byteCount <= 40 * (500 + header))
        #expect(await tier.stats().corruptDropped == 0)
    }

    @Test func refusesEntriesLargerThanTheQuota() async throws {
        let tier = try DiskTier(directory: Fixtures.temporaryDirectory(), quota: 100)
        await #expect(throws: TierError.self) { try await tier.put(Fixtures.key(1), [UInt8](repeating: 0, count: 100)) }
    }

    @Test func aSecondProcessOnTheSameDirectoryIsRefusedUntilTheFirstCloses() async throws {
        let dir = Fixtures.temporaryDirectory()
        do {
            let first = try DiskTier(directory: dir, quota: 1 << 20)
            try await first.put(Fixtures.key(1), [1, 2, 3])
            #expect(throws: TierError.inUse(DiskTier.entriesDirectory(in: dir).path)) {
                _ = try DiskTier(directory: dir, quota: 1 << 20)
            }
        }
        // The lock goes with the tier.
        let second = try DiskTier(directory: dir, quota: 1 << 20)
        #expect(try await second.get(Fixtures.key(1)) == [1, 2, 3])
    }

    @Test func filesThatAreNotTheTiersAreNeverDeleted() async throws {
        let dir = Fixtures.temporaryDirectory()
        let fm = FileManager.default
        // A user's files next to the tier, including names the tier once claimed.
        let user = ["notes.tmp", "photo.kve", "\(Fixtures.key(7).hex).kve", "sub/deep.tmp"]
        try fm.createDirectory(at: dir.appendingPathComponent("sub"), withIntermediateDirectories: true)
        for f in user { try Data("mine".utf8).write(to: dir.appendingPathComponent(f)) }
        do {
            let tier = try DiskTier(directory: dir, quota: 1 << 20)
            try await tier.put(Fixtures.key(1), [9, 9])
        }
        // Inside the tier's own directory, only its entry and temporary names are its own.
        let own = DiskTier.entriesDirectory(in: dir)
        try Data("x".utf8).write(to: own.appendingPathComponent("README.tmp"))
        try Data("x".utf8).write(to: own.appendingPathComponent("other.kve"))
        _ = try DiskTier(directory: dir, quota: 1 << 20)
        for f in user { #expect(fm.fileExists(atPath: dir.appendingPathComponent(f).path), "\(f)") }
        #expect(fm.fileExists(atPath: own.appendingPathComponent("README.tmp").path))
        #expect(fm.fileExists(atPath: own.appendingPathComponent("other.kve").path))
    }

    @Test func aForeignDirectoryWithoutTheFormatMarkerIsRefused() throws {
        let dir = Fixtures.temporaryDirectory()
        let own = DiskTier.entriesDirectory(in: dir)
        try FileManager.default.createDirectory(at: own, withIntermediateDirectories: true)
        try Data("x".utf8).write(to: own.appendingPathComponent("data.bin"))
        #expect {
            _ = try DiskTier(directory: dir, quota: 1 << 20)
        } throws: { error in
            guard case TierError.notATier = error else { return false }
            return true
        }
        #expect(FileManager.default.fileExists(atPath: own.appendingPathComponent("data.bin").path))
    }

    @Test func durableWritesSurviveReopening() async throws {
        let dir = Fixtures.temporaryDirectory()
        do {
            let tier = try DiskTier(directory: dir, quota: 1 << 20, synchronous: true)
            for i in 0..<3 { try await tier.put(Fixtures.key(i), [UInt8](repeating: UInt8(i), count: 64)) }
        }
        let reopened = try DiskTier(directory: dir, quota: 1 << 20, synchronous: true)
        for i in 0..<3 { #expect(try await reopened.get(Fixtures.key(i)) == [UInt8](repeating: UInt8(i), count: 64)) }
    }
}
