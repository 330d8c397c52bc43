import NIOCore

/// Writes commands as RESP arrays of bulk strings.
enum RESPEncoder {
    static func write(_ command: RedisCommand, into buffer: inout ByteBuffer) {
        buffer.writeString("*\(command.arguments.count)\r\n")
        for a in command.arguments {
            buffer.writeString("$\(a.count)\r\n")
            buffer.writeBytes(a)
            buffer.writeStaticString("\r\n")
        }
    }
}

/// Limits on what a server may send, so that a hostile or broken peer cannot make the
/// client allocate without bound or recurse without end.
public struct RESPLimits: Sendable, Equatable {
    /// Largest bulk string accepted.
    public var maxBulkBytes: Int
    /// Most elements of one array.
    public var maxArrayCount: Int
    /// Deepest nesting of arrays.
    public var maxDepth: Int
    /// Longest simple line (status, error, integer, length).
    public var maxLineBytes: Int

    public init(maxBulkBytes: Int = 512 << 20, maxArrayCount: Int = 1 << 20, maxDepth: Int = 8, maxLineBytes: Int = 64 << 10) {
        self.maxBulkBytes = maxBulkBytes
        self.maxArrayCount = maxArrayCount
        self.maxDepth = maxDepth
        self.maxLineBytes = maxLineBytes
    }
}

/// Parses RESP2 values from a byte stream, one complete value at a time.
struct RESPParser {
    let limits: RESPLimits

    enum Outcome {
        case value(RESPValue)
        case needMoreData
    }

    /// Parses one value from the front of `buffer`, consuming it only when complete.
    func parse(_ buffer: inout ByteBuffer) throws(RedisError) -> Outcome {
        var copy = buffer
        guard let v = try parseValue(&copy, depth: 0) else { return .needMoreData }
        buffer = copy
        return .value(v)
    }

    private func line(_ buffer: inout ByteBuffer) throws(RedisError) -> String? {
        let view = buffer.readableBytesView
        guard let cr = view.firstIndex(of: UInt8(ascii: "\r")) else {
            if view.count > limits.maxLineBytes { throw .protocolViolation("a line longer than \(limits.maxLineBytes) bytes") }
            return nil
        }
        let length = cr - view.startIndex
        guard length <= limits.maxLineBytes else { throw .protocolViolation("a line longer than \(limits.maxLineBytes) bytes") }
        guard view.count >= length + 2 else { return nil }
        guard view[cr + 1] == UInt8(ascii: "\n") else { throw .protocolViolation("CR without LF") }
        let s = buffer.readString(length: length)!
        buffer.moveReaderIndex(forwardBy: 2)
        return s
    }

    private func number(_ text: String) throws(RedisError) -> Int64 {
        guard let n = Int64(text) else { throw .protocolViolation("not a number: \(text.prefix(32))") }
        return n
    }

    private func parseValue(_ buffer: inout ByteBuffer, depth: Int) throws(RedisError) -> RESPValue? {
        guard let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        buffer.moveReaderIndex(forwardBy: 1)
        switch type {
        case UInt8(ascii: "+"):
            return try line(&buffer).map { .simpleString($0) }
        case UInt8(ascii: "-"):
            return try line(&buffer).map { .error($0) }
        case UInt8(ascii: ":"):
            guard let l = try line(&buffer) else { return nil }
            return .integer(try number(l))
        case UInt8(ascii: "$"):
            guard let l = try line(&buffer) else { return nil }
            let n = try number(l)
            if n == -1 { return .bulkString(nil) }
            guard n >= 0, n <= limits.maxBulkBytes else { throw .protocolViolation("bulk string of \(n) bytes") }
            guard buffer.readableBytes >= Int(n) + 2 else { return nil }
            let bytes = buffer.readBytes(length: Int(n))!
            guard buffer.readInteger(as: UInt8.self) == UInt8(ascii: "\r"), buffer.readInteger(as: UInt8.self) == UInt8(ascii: "\n") else {
                throw .protocolViolation("bulk string not terminated by CRLF")
            }
            return .bulkString(bytes)
        case UInt8(ascii: "*"):
            guard let l = try line(&buffer) else { return nil }
            let n = try number(l)
            if n == -1 { return .array(nil) }
            guard n >= 0, n <= limits.maxArrayCount else { throw .protocolViolation("array of \(n) elements") }
            guard depth < limits.maxDepth else { throw .protocolViolation("arrays nested deeper than \(limits.maxDepth)") }
            var elements: [RESPValue] = []
            elements.reserveCapacity(min(Int(n), 1024))
            for _ in 0..<n {
                guard let e = try parseValue(&buffer, depth: depth + 1) else { return nil }
                elements.append(e)
            }
            return .array(elements)
        default:
            throw .protocolViolation("unknown reply type byte 0x\(String(type, radix: 16))")
        }
    }
}

/// The NIO decoder of replies.
struct RESPDecoder: ByteToMessageDecoder {
    typealias InboundOut = RESPValue
    let parser: RESPParser

    init(limits: RESPLimits) { parser = RESPParser(limits: limits) }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        switch try parser.parse(&buffer) {
        case .value(let v):
            context.fireChannelRead(wrapInboundOut(v))
            return .continue
        case .needMoreData:
            return .needMoreData
        }
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}
