import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why a llama-server process could not be had. A missing binary is an error, never a
/// skip: `scripts/llama-server.sh` builds it (the README's scripts call it).
public struct LlamaServerProcessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A `llama-server` process on loopback with its own `--slot-save-path`, started and stopped
/// by a test or a benchmark. It runs under `timeout`, so an orphan left by a crashed parent
/// does not outlive ``lifetime`` seconds.
public final class LlamaServerProcess: @unchecked Sendable {
    public let port: Int
    /// The server's `--slot-save-path`.
    public let slotDirectory: URL
    /// The GGUF file it serves.
    public let model: String
    /// Its log (stdout and stderr).
    public let log: URL
    private let arguments: [String]
    private var process: Process?

    /// Seconds after which the process is killed whatever happens.
    public static let lifetime = 3600

    /// The version `scripts/llama-server.sh` builds.
    public static let pinnedVersion = "0.3.36"

    /// The binary: `KVTC_LLAMA_SERVER`, else the one `scripts/llama-server.sh` caches.
    public static func executable() throws -> String {
        let env = ProcessInfo.processInfo.environment
        if let path = env["KVTC_LLAMA_SERVER"], !path.isEmpty {
            guard FileManager.default.isExecutableFile(atPath: path) else { throw LlamaServerProcessError("KVTC_LLAMA_SERVER=\(path) is not executable") }
            return path
        }
        let cache = env["KVTC_CACHE_DIR"].map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/kvtc")
        let path = cache.appendingPathComponent("llama-server/\(pinnedVersion)/bin/llama-server").path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw LlamaServerProcessError("llama-server not found at \(path): build it with scripts/llama-server.sh (scripts/test.sh does)")
        }
        return path
    }

    /// The base URL.
    public var url: String { "http://127.0.0.1:\(port)" }

    /// Starts llama-server with `model` (a GGUF path), `slots` slots of `slotContext` tokens
    /// each, `threads` threads and `extra` flags; returns when `/health` answers 200.
    public init(model: String, slots: Int = 2, slotContext: Int = 4096, threads: Int = 1, slotDirectory: URL? = nil,
                extra: [String] = []) throws {
        self.model = model
        port = try Self.freePort()
        let dir = slotDirectory ?? FileManager.default.temporaryDirectory.appendingPathComponent("kvtc-slots-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        self.slotDirectory = dir
        log = FileManager.default.temporaryDirectory.appendingPathComponent("kvtc-llama-server-\(port).log")
        arguments = ["-m", model, "--host", "127.0.0.1", "--port", String(port), "-t", String(threads),
                     "--slot-save-path", dir.path + "/", "--no-webui", "-np", String(slots), "-c", String(slots * slotContext)] + extra
        try start()
    }

    /// A TCP port on loopback that no one listens on (the kernel's choice).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LlamaServerProcessError("socket() failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw LlamaServerProcessError("no free port on loopback") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Starts (or restarts, on the same port and directory) the process and waits for it.
    public func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        p.arguments = ["-s", "KILL", String(Self.lifetime), try Self.executable()] + arguments
        // llama-server runs as its users run it: without the thread and allocator tuning the
        // kvtc tool sets for itself (OpenMP spin counts, OpenBLAS, glibc tunables).
        p.environment = ProcessInfo.processInfo.environment.filter { key, _ in
            !["OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "GLIBC_TUNABLES", "KVTC_PROCESS_TUNED"].contains(key) && !key.hasPrefix("OPENBLAS_")
        }
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        process = p
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline, p.isRunning {
            if healthy() { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let tail = (try? String(contentsOf: log, encoding: .utf8)).map { String($0.suffix(1500)) } ?? ""
        kill()
        throw LlamaServerProcessError("llama-server on port \(port) did not become healthy:\n\(tail)")
    }

    /// Whether `/health` answers 200 (a blocking one-shot HTTP/1.0 request on a socket).
    func healthy() -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var limit = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected else { return false }
        let request = Array("GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        guard send(fd, request, request.count, 0) == request.count else { return false }
        var reply = [UInt8](repeating: 0, count: 64)
        let n = recv(fd, &reply, reply.count, 0)
        guard n > 12 else { return false }
        return String(decoding: reply[0..<n], as: UTF8.self).contains(" 200 ")
    }

    /// Whether the process runs.
    public var isRunning: Bool { process?.isRunning ?? false }

    /// Kills the server (SIGKILL) and waits for it to go.
    public func kill() {
        guard let p = process else { return }
        // `timeout` cannot forward SIGKILL: kill its child (the server) first, then it.
        let pid = p.processIdentifier
        let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        for child in children.split(separator: " ").compactMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
            Glibc.kill(child, SIGKILL)
        }
        Glibc.kill(pid, SIGKILL)
        p.waitUntilExit()
        process = nil
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: slotDirectory)
        try? FileManager.default.removeItem(at: log)
    }
}
