import Foundation
import KVTCTestSupport
import Testing
@testable import KVTCRedis

private func key(_ i: Int) -> [UInt8] { Array("kvtc-test:\(i)".utf8) }

/// The deadline of tests that check results, not time: CI runs them beside the model's
/// tests on two busy cores.
private let generous = 5.0
/// What a failing batch may cost beyond its deadline here: CI runs these tests beside the
/// model's on two cores, whose threads can keep a test's task waiting for a second. The
/// bound tells a deadline from a hang (a stalled node without one never answers); the
/// cost itself is measured by `kvtc bench shared-tier`, not by a timed test.
private let slack = 10.0
private func value(_ i: Int) -> [UInt8] { (0..<(100 + i % 7 * 1000)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) } }

/// Sets keys `range` and checks that each reads back.
private func roundTrip(_ client: RedisClient, _ range: Range<Int>) async throws {
    let set = await client.execute(range.map { .set(key($0), value($0)) }, timeout: generous)
    for r in set { #expect(try r.get() == .simpleString("OK")) }
    let got = await client.execute(range.map { .get(key($0)) }, timeout: generous)
    for (i, r) in zip(range, got) {
        let same = try r.get() == .bulkString(value(i))
        #expect(same, "key \(i) read back different")
    }
}

@Suite(.serialized) struct StandaloneRedisTests {
    @Test func pipelinesAuthenticatesAndExpires() async throws {
        let server = try RedisServer(configuration: ["--user", "default", "off", "--user", "kvtc", "on", ">secret-pw", "~*", "+@all"])
        let client = try RedisClient(configuration: try RedisConfiguration(url: "redis://kvtc:secret-pw@127.0.0.1:\(server.port)", timeout: generous))
        #expect(try await client.connect(timeout: generous) == .standalone(RedisAddress(host: "127.0.0.1", port: server.port)))
        try await roundTrip(client, 0..<200)
        let exists = await client.execute([.exists(key(3)), .exists(key(999)), .del(key(3)), .exists(key(3)), .get(key(3))])
        #expect(try exists.map { try $0.get() } == [.integer(1), .integer(0), .integer(1), .integer(0), .bulkString(nil)])
        // A wrong-type command is a server error for that command only.
        let mixed = await client.execute([RedisCommand("LPUSH", [key(5), [1]]), .get(key(6))])
        guard case .failure(.server(let m)) = mixed[0] else { Issue.record("expected WRONGTYPE, got \(mixed[0])"); return }
        #expect(m.hasPrefix("WRONGTYPE"))
        #expect(try mixed[1].get() == .bulkString(value(6)))
        // PX: the expiry is set, and a short one passes.
        _ = await client.execute([.set(key(1000), [1], ttlMilliseconds: 60_000), .set(key(1001), [1], ttlMilliseconds: 50)])
        let ttl = try await client.send(RedisCommand("PTTL", [key(1000)]), to: RedisAddress(host: "127.0.0.1", port: server.port), timeout: generous)
        #expect((1...60_000).contains(ttl.integer ?? 0))
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(try await client.execute(.get(key(1001)), timeout: generous).get() == .bulkString(nil))
    }

    @Test func refusedCredentialsAreTyped() async throws {
        let server = try RedisServer(configuration: ["--requirepass", "right"])
        let wrong = try RedisClient(configuration: try RedisConfiguration(url: "redis://:wrong@127.0.0.1:\(server.port)", timeout: 1))
        await #expect {
            try await wrong.connect(timeout: generous)
        } throws: { error in
            guard case RedisError.authentication = error else { return false }
            return true
        }
        let none = try RedisClient(configuration: try RedisConfiguration(url: "redis://127.0.0.1:\(server.port)", timeout: 1))
        await #expect(throws: RedisError.self) { try await none.connect(timeout: generous) }
        let right = try RedisClient(configuration: try RedisConfiguration(url: "redis://:right@127.0.0.1:\(server.port)", timeout: generous))
        try await right.connect(timeout: generous)
        try await roundTrip(right, 0..<10)
    }

    @Test func speaksTLSAndVerifiesTheServer() async throws {
        let files = try RedisServer.TLSFiles.make(in: FileManager.default.temporaryDirectory
            .appendingPathComponent("kvtc-tls-\(UUID().uuidString.prefix(8))"))
        let server = try RedisServer(configuration: ["--requirepass", "over-tls"], tls: files)
        let url = "rediss://:over-tls@127.0.0.1:\(server.port)"
        let client = try RedisClient(configuration: try RedisConfiguration(url: url, timeout: generous, tlsCAFile: files.caCertificate))
        #expect(try await client.connect(timeout: generous) == .standalone(RedisAddress(host: "127.0.0.1", port: server.port)))
        try await roundTrip(client, 0..<50)
        // The system's roots do not know the test CA: the handshake fails, typed.
        let unverified = try RedisClient(configuration: try RedisConfiguration(url: url, timeout: generous))
        await #expect(throws: RedisError.self) { try await unverified.connect(timeout: generous) }
        // Plain RESP to a TLS port gets no answer it can parse; an unreadable CA is refused up front.
        let plain = try RedisClient(configuration: try RedisConfiguration(url: "redis://:over-tls@127.0.0.1:\(server.port)", timeout: 1))
        await #expect(throws: RedisError.self) { try await plain.connect(timeout: 1) }
        #expect(throws: RedisError.self) {
            _ = try RedisClient(configuration: try RedisConfiguration(url: url, tlsCAFile: files.caCertificate + ".missing"))
        }
    }

    @Test func aDownOrStalledNodeCostsAtMostTheTimeoutAndRecovers() async throws {
        let server = try RedisServer()
        let timeout = 0.05
        var configuration = try RedisConfiguration(url: "redis://127.0.0.1:\(server.port)", timeout: timeout)
        configuration.initialBackoff = 0.05
        configuration.maxBackoff = 0.2
        let client = try RedisClient(configuration: configuration)
        try await client.connect(timeout: generous)
        try await roundTrip(client, 0..<20)

        // Stalled: accepts bytes, never answers. Each batch fails within about the timeout.
        server.pause(true)
        for _ in 0..<5 {
            let clock = Date()
            let r = await client.execute((0..<20).map { .get(key($0)) })
            let seconds = Date().timeIntervalSince(clock)
            #expect(r.allSatisfy { if case .failure = $0 { return true } else { return false } })
            #expect(seconds < timeout + slack, "a stalled node cost \(seconds) s")
        }
        server.pause(false)
        try await eventually { try await client.execute(.get(key(1)), timeout: generous).get() == .bulkString(value(1)) }

        // Down: refused connections fail fast; the node is used again once it is back.
        server.kill()
        for _ in 0..<5 {
            let clock = Date()
            let r = await client.execute(.get(key(1)))
            #expect(Date().timeIntervalSince(clock) < timeout + slack)
            guard case .failure = r else { Issue.record("a dead node answered: \(r)"); return }
        }
        try server.start()
        try await eventually { try await client.execute(.set(key(1), value(1)), timeout: generous).get() == .simpleString("OK") }
        #expect(try await client.execute(.get(key(1)), timeout: generous).get() == .bulkString(value(1)))
    }
}

/// Retries `condition` for up to `seconds`.
func eventually(_ seconds: Double = 10, _ condition: () async throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if (try? await condition()) == true { return }
        try await Task.sleep(nanoseconds: 20_000_000)
    }
    Issue.record("condition not met in \(seconds) s")
}

@Suite(.serialized) struct RedisClusterTests {
    @Test func routesBySlotAndFollowsMovedSlots() async throws {
        let cluster = try RedisClusterServers(masters: 3)
        // One seed is enough: the client learns every master from it.
        let client = try RedisClient(configuration: try RedisConfiguration(url: "redis://127.0.0.1:\(cluster.nodes[1].port)", timeout: generous))
        guard case .cluster(let masters) = try await client.connect(timeout: generous) else { Issue.record("not a cluster"); return }
        #expect(masters.count == 3 && masters.values.reduce(0, +) == HashSlot.count)
        try await roundTrip(client, 0..<300)
        // Every master holds some of the keys: the batch really was split by slot.
        for node in cluster.nodes {
            let n = Int(try node.cli(["dbsize"]).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
            #expect(n > 50, "node \(node.port) holds \(n) of 300 keys")
        }

        // Move 500 slots (with their keys) from the first master to the second behind the
        // client's back: its stale map gets MOVED replies, which it follows and learns.
        let from = try cluster.id(of: cluster.nodes[0]), to = try cluster.id(of: cluster.nodes[1])
        let out = try RedisServer.run(try RedisServer.executable("redis-cli"),
                                      ["--cluster", "reshard", "127.0.0.1:\(cluster.nodes[0].port)", "--cluster-from", from,
                                       "--cluster-to", to, "--cluster-slots", "500", "--cluster-yes"])
        #expect(out.contains("Moving slot"), "reshard: \(out.suffix(400))")
        try cluster.waitUntilHealthy()
        let got = await client.execute((0..<300).map { .get(key($0)) })
        for (i, r) in got.enumerated() {
            let same = try r.get() == .bulkString(value(i))
            #expect(same, "key \(i) read back different after the reshard")
        }
        try await eventually {
            guard case .cluster(let m) = client.topology else { return false }
            return m[RedisAddress(host: "127.0.0.1", port: cluster.nodes[1].port)] == masters[RedisAddress(host: "127.0.0.1", port: cluster.nodes[1].port)]! + 500
        }
    }

    @Test func followsAskDuringASlotMigration() async throws {
        let cluster = try RedisClusterServers(masters: 3)
        let client = try RedisClient(configuration: try RedisConfiguration(url: cluster.url, timeout: generous))
        guard case .cluster(let before) = try await client.connect(timeout: generous) else { Issue.record("not a cluster"); return }
        // A key whose slot the first master serves, being migrated to the second: the source
        // answers ASK for keys it no longer holds, the target serves them after ASKING.
        let slot = HashSlot.of(key(7))
        // The node that serves the slot answers a GET itself; the others redirect with MOVED.
        let source = try #require(cluster.nodes.first { node in
            (try? node.cli(["get", String(decoding: key(7), as: UTF8.self)]))?.contains("MOVED") == false
        })
        let target = try #require(cluster.nodes.first { $0 !== source })
        #expect(try target.cli(["cluster", "setslot", String(slot), "importing", cluster.id(of: source)]).contains("OK"))
        #expect(try source.cli(["cluster", "setslot", String(slot), "migrating", cluster.id(of: target)]).contains("OK"))
        #expect(try await client.execute(.set(key(7), value(7)), timeout: generous).get() == .simpleString("OK"))
        #expect(try await client.execute(.get(key(7)), timeout: generous).get() == .bulkString(value(7)))
        // The key went to the importing node, and ASK did not change the client's map.
        #expect(try target.cli(["cluster", "countkeysinslot", String(slot)]).trimmingCharacters(in: .whitespacesAndNewlines) == "1")
        #expect(try source.cli(["cluster", "countkeysinslot", String(slot)]).trimmingCharacters(in: .whitespacesAndNewlines) == "0")
        #expect(client.topology == .cluster(masters: before))
    }

    @Test func followsAFailoverToTheReplica() async throws {
        let cluster = try RedisClusterServers(masters: 3, replicas: 1)
        let client = try RedisClient(configuration: try RedisConfiguration(url: cluster.url, timeout: generous))
        guard case .cluster(let masters) = try await client.connect(timeout: generous), masters.count == 3 else {
            Issue.record("not a cluster of 3 masters")
            return
        }
        let keys = 0..<200
        _ = await client.execute(keys.map { .set(key($0), value($0)) }, timeout: generous)
        // Every write has reached the replicas before the master goes.
        for node in cluster.nodes where (try? node.cli(["role"]))?.hasPrefix("master") == true {
            _ = try node.cli(["wait", "1", "5000"])
        }
        let victim = try #require(cluster.nodes.first { node in
            masters.keys.contains(RedisAddress(host: "127.0.0.1", port: node.port))
        })
        victim.kill()
        // The replica is promoted after the node timeout; the client, whose map still names
        // the dead master, finds it through a refreshed slot map and serves every key again.
        try await eventually(30) {
            let got = await client.execute(keys.map { .get(key($0)) })
            return got.enumerated().allSatisfy { i, r in (try? r.get()) == .bulkString(value(i)) }
        }
        #expect(!client.masters.contains(RedisAddress(host: "127.0.0.1", port: victim.port)))
        #expect(client.masters.count == 3)
    }

    @Test func aKilledMasterCostsOnlyItsKeysAndReturns() async throws {
        let cluster = try RedisClusterServers(masters: 3)
        let timeout = 0.25
        var configuration = try RedisConfiguration(url: cluster.url, timeout: timeout)
        configuration.initialBackoff = 0.05
        configuration.maxBackoff = 0.2
        let client = try RedisClient(configuration: configuration)
        try await client.connect(timeout: generous)
        let keys = 0..<300
        _ = await client.execute(keys.map { .set(key($0), value($0)) }, timeout: generous)
        let victim = cluster.nodes[2]
        let victimAddress = RedisAddress(host: "127.0.0.1", port: victim.port)
        victim.kill()
        var survivors = 0
        for round in 0..<5 {
            let clock = Date()
            let got = await client.execute(keys.map { .get(key($0)) })
            let seconds = Date().timeIntervalSince(clock)
            #expect(seconds < timeout + slack, "round \(round) took \(seconds) s")
            survivors = 0
            for (i, r) in got.enumerated() {
                switch r {
                case .success(let v):
                    let same = v == .bulkString(value(i))
                    #expect(same, "key \(i) read back different")
                    survivors += 1
                case .failure: break
                }
            }
        }
        // The other two masters' keys (about two thirds) kept being served.
        #expect(survivors > 150 && survivors < 280, "\(survivors) of 300 served with one master down")
        try victim.start()
        try cluster.waitUntilHealthy()
        try await eventually {
            await client.execute(keys.map { .set(key($0), value($0)) }, timeout: generous).allSatisfy { (try? $0.get()) == .simpleString("OK") }
        }
        #expect(client.masters.contains(victimAddress))
    }
}
