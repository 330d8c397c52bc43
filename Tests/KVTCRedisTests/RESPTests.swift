import NIOCore
import Testing
@testable import KVTCRedis

@Suite struct RESPParserTests {
    let parser = RESPParser(limits: RESPLimits(maxBulkBytes: 1 << 10, maxArrayCount: 100, maxDepth: 3, maxLineBytes: 64))

    func parseAll(_ text: [UInt8]) throws -> [RESPValue] {
        var buffer = ByteBuffer(bytes: text)
        var out: [RESPValue] = []
        while case .value(let v) = try parser.parse(&buffer) { out.append(v) }
        #expect(buffer.readableBytes == 0)
        return out
    }

    static let stream = Array("+OK\r\n-ERR wrong\r\n:-42\r\n$5\r\nhe\r\no\r\n$-1\r\n*-1\r\n*3\r\n:1\r\n*1\r\n$0\r\n\r\n+x\r\n".utf8)
    static let values: [RESPValue] = [.simpleString("OK"), .error("ERR wrong"), .integer(-42), .bulkString(Array("he\r\no".utf8)),
                                      .bulkString(nil), .array(nil),
                                      .array([.integer(1), .array([.bulkString([])]), .simpleString("x")])]

    @Test func parsesEveryReplyType() throws {
        #expect(try parseAll(Self.stream) == Self.values)
    }

    @Test func waitsForMoreDataAtEverySplit() throws {
        // Fed in two pieces split anywhere, the stream parses to the same values and a
        // partial value is never consumed.
        for split in 0...Self.stream.count {
            var buffer = ByteBuffer(bytes: Self.stream[..<split])
            var out: [RESPValue] = []
            while case .value(let v) = try parser.parse(&buffer) { out.append(v) }
            buffer.writeBytes(Self.stream[split...])
            while case .value(let v) = try parser.parse(&buffer) { out.append(v) }
            #expect(out == Self.values, "split at \(split)")
        }
    }

    @Test(arguments: [
        "$2000\r\n",             // bulk over the limit
        "*101\r\n",              // array over the limit
        "*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", // nested too deep
        "?x\r\n",                // unknown type
        ":12a\r\n",              // not a number
        "+OK\rX",                // CR without LF
        "$3\r\nabcXY",           // bulk not terminated by CRLF
        "$-5\r\n",               // negative length
    ])
    func refusesHostileReplies(_ text: String) {
        var buffer = ByteBuffer(string: text)
        #expect(throws: RedisError.self) { _ = try parser.parse(&buffer) }
    }

    @Test func refusesEndlessLines() {
        var buffer = ByteBuffer(string: "+" + String(repeating: "a", count: 100))
        #expect(throws: RedisError.self) { _ = try parser.parse(&buffer) }
    }

    @Test func encodesCommandsAsBulkStringArrays() {
        var buffer = ByteBuffer()
        RESPEncoder.write(.set(Array("k".utf8), [0, 13, 10], ttlMilliseconds: 1500), into: &buffer)
        #expect(Array(buffer.readableBytesView) == Array("*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n".utf8) + [0, 13, 10]
            + Array("\r\n$2\r\nPX\r\n$4\r\n1500\r\n".utf8))
    }
}

@Suite struct HashSlotTests {
    @Test func crc16IsXmodem() {
        // The check value of CRC-16/XMODEM, and Redis Cluster's own example.
        #expect(HashSlot.crc16(Array("123456789".utf8)) == 0x31C3)
        #expect(HashSlot.of(Array("foo".utf8)) == 12182)
    }

    @Test func hashTags() {
        let slot = { (s: String) in HashSlot.of(Array(s.utf8)) }
        #expect(slot("{user1000}.following") == slot("user1000"))
        #expect(slot("{user1000}.followers") == slot("user1000"))
        #expect(slot("foo{}{bar}") == Int(HashSlot.crc16(Array("foo{}{bar}".utf8))) % 16384)
        #expect(slot("foo{{bar}}zap") == slot("{bar"))
        #expect(slot("foo{bar}{zap}") == slot("bar"))
        #expect(slot("no-tag{") == Int(HashSlot.crc16(Array("no-tag{".utf8))) % 16384)
    }
}

@Suite struct RedisConfigurationTests {
    @Test func parsesURLs() throws {
        let one = try RedisConfiguration(url: "redis://cache.internal")
        #expect(one.seeds == [RedisAddress(host: "cache.internal", port: 6379)])
        #expect(one.user == nil && one.password == nil)
        let acl = try RedisConfiguration(url: "redis://kvtc:s%40cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0")
        #expect(acl.user == "kvtc" && acl.password == "s@cret")
        #expect(acl.seeds == [RedisAddress(host: "10.0.0.1", port: 7000), RedisAddress(host: "10.0.0.2", port: 7001),
                              RedisAddress(host: "::1", port: 7002)])
        let password = try RedisConfiguration(url: "redis://:pw@localhost:6380")
        #expect(password.user == nil && password.password == "pw")
    }

    @Test func rediss() throws {
        let tls = try RedisConfiguration(url: "rediss://u:p@cache.example:6380", tlsCAFile: "/etc/ca.pem")
        #expect(tls.tls && tls.tlsCAFile == "/etc/ca.pem" && tls.seeds == [RedisAddress(host: "cache.example", port: 6380)])
        #expect(try !RedisConfiguration(url: "redis://h").tls)
        #expect(throws: RedisError.self) { _ = try RedisConfiguration(url: "redis://h", tlsCAFile: "/etc/ca.pem") }
    }

    @Test(arguments: ["http://h:1", "rediss://", "redis+tls://h:6379", "redis://", "redis://h:0", "redis://h:99999", "redis://h:x",
                      "redis://h:1/3", "redis://a:%zz@h", "redis://[::1:6379", "redis://h:1,"])
    func refusesBadURLs(_ url: String) {
        #expect(throws: RedisError.self) { _ = try RedisConfiguration(url: url) }
    }

    @Test func parsesRedirections() {
        let moved = RedisClient.redirection("MOVED 3999 127.0.0.1:6381")
        #expect(moved?.0 == "MOVED" && moved?.1 == 3999 && moved?.2 == RedisAddress(host: "127.0.0.1", port: 6381))
        #expect(RedisClient.redirection("ASK 1 h:2")?.0 == "ASK")
        #expect(RedisClient.redirection("MOVED 16384 h:1") == nil)
        #expect(RedisClient.redirection("ERR MOVED") == nil)
    }
}
