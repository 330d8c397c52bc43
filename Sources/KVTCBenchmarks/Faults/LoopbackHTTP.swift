import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A deliberately small HTTP/1.1 client over blocking loopback sockets, for the fault
/// harness and the server's socket tests: it can send exactly the bytes it is given
/// (half-sent requests, garbage, oversized bodies), read a response incrementally, and
/// walk away in the middle of one — which a well-behaved client library will not do.
public enum LoopbackHTTP {
    /// Why an exchange failed at the socket level.
    public enum Failure: Error, Equatable, CustomStringConvertible {
        /// Nothing listens on the port (the server is down).
        case refused
        /// The connection broke or timed out before a complete response.
        case broken(String)
        /// The response was not HTTP.
        case malformed(String)

        public var description: String {
            switch self {
            case .refused: return "connection refused"
            case .broken(let m): return "connection broken: \(m)"
            case .malformed(let m): return "malformed response: \(m)"
            }
        }
    }

    /// A complete response.
    public struct Reply: Sendable {
        public var status: Int
        /// Header names lowercased.
        public var headers: [String: String]
        public var body: [UInt8]

        public var text: String { String(decoding: body, as: UTF8.self) }
        /// The body as a JSON object, if it is one.
        public var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] }
    }

    /// An open connection to `127.0.0.1:port`.
    public final class Connection {
        let fd: Int32
        private var buffer: [UInt8] = []
        private var eof = false

        /// Connects with send and receive timeouts of `timeout` seconds.
        public init(port: Int, timeout: Double) throws(Failure) {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw .broken("socket: \(String(cString: strerror(errno)))") }
            var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else {
                let e = errno
                close(fd)
                throw e == ECONNREFUSED ? .refused : .broken("connect: \(String(cString: strerror(e)))")
            }
            self.fd = fd
        }

        deinit { close(fd) }

        /// Sends `bytes` (all of them, or fails).
        public func send(_ bytes: [UInt8]) throws(Failure) {
            var sent = 0
            while sent < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw .broken("send: \(String(cString: strerror(errno)))")
                }
                sent += n
            }
        }

        /// Reads more bytes into the buffer; false at end of stream.
        private func fill() throws(Failure) -> Bool {
            if eof { return false }
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                if n > 0 { buffer.append(contentsOf: chunk[0..<n]); return true }
                if n == 0 { eof = true; return false }
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .broken("timed out") }
                throw .broken("recv: \(String(cString: strerror(errno)))")
            }
        }

        private func line() throws(Failure) -> String {
            while true {
                if let i = buffer.firstIndex(of: 0x0A) {
                    let l = String(decoding: buffer[..<i], as: UTF8.self).trimmingCharacters(in: .init(charactersIn: "\r"))
                    buffer.removeFirst(i + 1)
                    return l
                }
                guard try fill() else { throw .broken("closed mid-line") }
            }
        }

        private func take(_ n: Int) throws(Failure) -> [UInt8] {
            while buffer.count < n { guard try fill() else { throw .broken("closed after \(buffer.count) of \(n) bytes") } }
            let out = Array(buffer[..<n])
            buffer.removeFirst(n)
            return out
        }

        /// Reads the status line and headers.
        public func head() throws(Failure) -> (Int, [String: String]) {
            let status = try line()
            let parts = status.split(separator: " ")
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]) else {
                throw .malformed("status line \(status.prefix(80).debugDescription)")
            }
            var headers: [String: String] = [:]
            while true {
                let l = try line()
                if l.isEmpty { break }
                guard let colon = l.firstIndex(of: ":") else { throw .malformed("header \(l.prefix(80).debugDescription)") }
                headers[l[..<colon].lowercased()] = l[l.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            return (code, headers)
        }

        /// Reads a body (content-length, chunked, or to end of stream), passing each piece to
        /// `onData`; stops early (returning false) when `onData` returns false.
        public func body(_ headers: [String: String], onData: ([UInt8]) -> Bool) throws(Failure) -> Bool {
            if headers["transfer-encoding"]?.lowercased() == "chunked" {
                while true {
                    let sizeLine = try line()
                    guard let size = Int(sizeLine.split(separator: ";").first ?? "", radix: 16) else {
                        throw .malformed("chunk size \(sizeLine.prefix(40).debugDescription)")
                    }
                    if size == 0 { _ = try? line(); return true }
                    let data = try take(size)
                    _ = try line()
                    if !onData(data) { return false }
                }
            }
            if let length = headers["content-length"].flatMap({ Int($0) }) {
                return onData(try take(length))
            }
            while try fill() {}
            let rest = buffer
            buffer.removeAll()
            return onData(rest)
        }

        /// Reads a whole response.
        public func response() throws(Failure) -> Reply {
            let (status, headers) = try head()
            var body: [UInt8] = []
            _ = try self.body(headers) { body.append(contentsOf: $0); return true }
            return Reply(status: status, headers: headers, body: body)
        }

        /// Whether the server closed the connection within `seconds` (reading and
        /// discarding anything it sends).
        public func closedByPeer(within seconds: Double) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                do { if try !fill() { return true } } catch {
                    if case .broken(let m) = error, m == "timed out" { continue }
                    return true
                }
            }
            return false
        }
    }

    /// The bytes of a request (`Connection: close`).
    public static func requestBytes(method: String, path: String, headers: [String: String] = [:], body: [UInt8]? = nil) -> [UInt8] {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        for (k, v) in headers.sorted(by: { $0.key < $1.key }) { text += "\(k): \(v)\r\n" }
        if let body { text += "Content-Length: \(body.count)\r\n" }
        text += "\r\n"
        return Array(text.utf8) + (body ?? [])
    }

    /// One request and its whole response.
    public static func exchange(port: Int, method: String, path: String, headers: [String: String] = [:],
                                body: [UInt8]? = nil, timeout: Double = 120) throws(Failure) -> Reply {
        let c = try Connection(port: port, timeout: timeout)
        try c.send(requestBytes(method: method, path: path, headers: headers, body: body))
        return try c.response()
    }

    /// A JSON request with an optional bearer key.
    public static func json(port: Int, method: String = "POST", path: String, key: String?, object: Any,
                            timeout: Double = 120) throws(Failure) -> Reply {
        var headers = ["Content-Type": "application/json"]
        if let key { headers["Authorization"] = "Bearer \(key)" }
        let body = (try? JSONSerialization.data(withJSONObject: object)).map(Array.init) ?? []
        return try exchange(port: port, method: method, path: path, headers: headers, body: body, timeout: timeout)
    }
}
