/// One value of the Redis serialization protocol (RESP2), as a server sends it.
public enum RESPValue: Sendable, Equatable {
    /// `+OK`
    case simpleString(String)
    /// `-ERR ...`: the server refused the command (the whole line, code first).
    case error(String)
    /// `:42`
    case integer(Int64)
    /// `$n` bytes, or `nil` for the null bulk string (`$-1`, a missing key).
    case bulkString([UInt8]?)
    /// `*n` values, or `nil` for the null array (`*-1`).
    case array([RESPValue]?)

    /// The bytes of a bulk or simple string.
    public var bytes: [UInt8]? {
        switch self {
        case .bulkString(let b): return b
        case .simpleString(let s): return Array(s.utf8)
        default: return nil
        }
    }

    /// The text of a bulk or simple string.
    public var string: String? { bytes.map { String(decoding: $0, as: UTF8.self) } }

    /// The value of an integer reply.
    public var integer: Int64? {
        if case .integer(let i) = self { return i }
        return nil
    }

    /// The elements of an array reply.
    public var array: [RESPValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// The error line of an error reply.
    public var errorMessage: String? {
        if case .error(let e) = self { return e }
        return nil
    }
}

/// One command: its name and arguments, each sent as a bulk string.
public struct RedisCommand: Sendable, Equatable {
    /// The name and arguments.
    public var arguments: [[UInt8]]

    /// A command from its words (`GET`, key) and binary arguments.
    public init(_ name: String, _ arguments: [[UInt8]] = []) {
        self.arguments = [Array(name.utf8)] + arguments
    }

    /// A command from its words only.
    public init(_ words: [String]) {
        self.arguments = words.map { Array($0.utf8) }
    }

    /// `GET key`
    public static func get(_ key: [UInt8]) -> RedisCommand { RedisCommand("GET", [key]) }
    /// `SET key value [PX milliseconds]`
    public static func set(_ key: [UInt8], _ value: [UInt8], ttlMilliseconds: Int? = nil) -> RedisCommand {
        var c = RedisCommand("SET", [key, value])
        if let ttlMilliseconds { c.arguments += [Array("PX".utf8), Array(String(ttlMilliseconds).utf8)] }
        return c
    }
    /// `DEL key`
    public static func del(_ key: [UInt8]) -> RedisCommand { RedisCommand("DEL", [key]) }
    /// `EXISTS key`
    public static func exists(_ key: [UInt8]) -> RedisCommand { RedisCommand("EXISTS", [key]) }
    /// `AUTH [user] password`
    public static func auth(user: String?, password: String) -> RedisCommand {
        RedisCommand("AUTH", (user.map { [Array($0.utf8)] } ?? []) + [Array(password.utf8)])
    }

    /// The command's name in upper case.
    public var name: String { String(decoding: arguments.first ?? [], as: UTF8.self).uppercased() }
}
