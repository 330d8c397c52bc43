import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Progress and status lines on standard error; redraws in place on a terminal.
final class Progress: @unchecked Sendable {
    private let interactive = isatty(2) != 0
    private let lock = NSLock()
    private var lastLength = 0
    private var started = Date()

    static let shared = Progress()

    /// Shows a transient status line (replaced by the next one on a terminal).
    func status(_ message: String) {
        lock.withLock {
            let line = String(format: "[%6.1fs] ", Date().timeIntervalSince(started)) + message
            if interactive {
                let pad = max(0, lastLength - line.count)
                FileHandle.standardError.write(Data(("\r" + line + String(repeating: " ", count: pad)).utf8))
                lastLength = line.count
            } else {
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
        }
    }

    /// Ends the transient line.
    func done() {
        lock.withLock {
            if interactive, lastLength > 0 { FileHandle.standardError.write(Data("\n".utf8)) }
            lastLength = 0
        }
    }
}

/// Writes a line to standard error.
func warn(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// An error a command reports with the file it concerns.
struct CommandError: Error, CustomStringConvertible {
    let description: String
    init(_ file: String, _ error: Any) { description = "\(file): \(error)" }
    init(_ message: String) { description = message }
}

/// Reads a whole file or throws a ``CommandError`` naming it.
func readFile(_ path: String) throws -> [UInt8] {
    guard let d = FileManager.default.contents(atPath: path) else {
        throw CommandError(path, FileManager.default.fileExists(atPath: path) ? "cannot be read" : "no such file")
    }
    return [UInt8](d)
}

/// Writes a whole file atomically or throws a ``CommandError`` naming it.
func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    do { try Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
        throw CommandError(path, "cannot be written (\(error.localizedDescription))")
    }
}

/// Formats a byte count.
func formatBytes(_ n: Int) -> String {
    let d = Double(n)
    if n >= 1 << 30 { return String(format: "%.2f GiB", d / Double(1 << 30)) }
    if n >= 1 << 20 { return String(format: "%.2f MiB", d / Double(1 << 20)) }
    if n >= 1 << 10 { return String(format: "%.1f KiB", d / Double(1 << 10)) }
    return "\(n) B"
}

/// Parses a comma-separated list of ratios such as `8,16,32`.
func parseRatios(_ s: String) throws -> [Double] {
    let parts = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    let values = parts.compactMap { Double($0.hasSuffix("x") ? String($0.dropLast()) : $0) }
    guard values.count == parts.count, !values.isEmpty, values.allSatisfy({ $0 >= 1 && $0 <= 1000 }) else {
        throw ValidationError("ratios must be numbers in 1...1000 separated by commas, got '\(s)'")
    }
    return values
}

/// Parses the group sizes the bit allocator may use: ascending, distinct, 1 among them (so
/// any run of components can be covered), at most 4096.
func parseGroupSizes(_ s: String) throws -> [Int] {
    let parts = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    let values = parts.compactMap { Int($0) }
    guard values.count == parts.count, values.first == 1, values.allSatisfy({ $0 >= 1 && $0 <= 4096 }),
          zip(values, values.dropFirst()).allSatisfy({ $0 < $1 }) else {
        throw ValidationError("group sizes must be ascending integers from 1 up to 4096, starting with 1, got '\(s)'")
    }
    return values
}

/// Encodes a value as pretty, key-sorted JSON.
func jsonString<T: Encodable>(_ value: T) -> String {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    return String(decoding: (try? e.encode(value)) ?? Data(), as: UTF8.self)
}
