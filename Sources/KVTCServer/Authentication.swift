import Crypto
import Foundation
import KVTCStore

/// Who made a request: the tenant its key belongs to, and whether the key is an admin's.
public struct Principal: Sendable, Equatable {
    /// The tenant (salts every store key of its requests); empty on a server without keys.
    public var tenant: String
    /// Whether the key may use the raw KV routes and name other tenants there.
    public var isAdmin: Bool

    public init(tenant: String, isAdmin: Bool) {
        self.tenant = tenant
        self.isAdmin = isAdmin
    }

    /// The caller of a server without a key file (loopback only): the shared tenant.
    public static let local = Principal(tenant: "", isAdmin: false)
}

/// A malformed API key file, by line.
public struct APIKeyFileError: Error, Equatable, CustomStringConvertible {
    public var path: String
    public var line: Int
    public var problem: String

    public var description: String { line > 0 ? "\(path):\(line): \(problem)" : "\(path): \(problem)" }
}

/// The API keys a server accepts: one `KEY TENANT [admin]` per line of its key file
/// (`#` starts a comment). Keys are compared in constant time, by their SHA-256 digests.
public struct APIKeys: Sendable {
    struct Entry: Sendable {
        var digest: [UInt8]
        var principal: Principal
    }

    private let entries: [Entry]

    /// Tenants named by the keys.
    public var tenants: Set<String> { Set(entries.map(\.principal.tenant)) }
    /// Whether some key is an admin's.
    public var hasAdmin: Bool { entries.contains { $0.principal.isAdmin } }

    /// Keys from `(key, principal)` pairs.
    public init(_ keys: [(String, Principal)]) {
        entries = keys.map { Entry(digest: Array(SHA256.hash(data: Array($0.0.utf8))), principal: $0.1) }
    }

    /// Parses a key file's text.
    public init(parsing text: String, path: String = "key file") throws(APIKeyFileError) {
        var keys: [(String, Principal)] = []
        var seen = Set<String>()
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            if fields.isEmpty { continue }
            let n = i + 1
            guard fields.count == 2 || fields.count == 3 else {
                throw APIKeyFileError(path: path, line: n, problem: "expected KEY TENANT [admin], found \(fields.count) fields")
            }
            guard fields.count == 2 || fields[2] == "admin" else {
                throw APIKeyFileError(path: path, line: n, problem: "the third field must be 'admin', not '\(fields[2])'")
            }
            guard fields[0].utf8.count >= 16 else {
                throw APIKeyFileError(path: path, line: n, problem: "keys must be at least 16 characters")
            }
            guard fields[1].utf8.count <= 128, fields[1].allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
                throw APIKeyFileError(path: path, line: n, problem: "tenant names are letters, digits, '-', '_' or '.' (at most 128)")
            }
            guard seen.insert(fields[0]).inserted else {
                throw APIKeyFileError(path: path, line: n, problem: "the key is listed twice")
            }
            keys.append((fields[0], Principal(tenant: fields[1], isAdmin: fields.count == 3)))
        }
        guard !keys.isEmpty else { throw APIKeyFileError(path: path, line: 0, problem: "holds no keys") }
        self.init(keys)
    }

    /// Reads a key file.
    public init(contentsOf path: String) throws(APIKeyFileError) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw APIKeyFileError(path: path, line: 0, problem: "cannot be read")
        }
        try self.init(parsing: String(decoding: data, as: UTF8.self), path: path)
    }

    /// The principal of `key`, comparing against every key in constant time.
    public func principal(for key: String) -> Principal? {
        let digest = Array(SHA256.hash(data: Array(key.utf8)))
        var found: Principal?
        for e in entries {
            var difference: UInt8 = 0
            for i in 0..<digest.count { difference |= digest[i] ^ e.digest[i] }
            if difference == 0 { found = e.principal }
        }
        return found
    }

    /// The principal of an `Authorization: Bearer KEY` header value.
    public func principal(authorization: String?) -> Principal? {
        guard let authorization else { return nil }
        let parts = authorization.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return principal(for: String(parts[1]).trimmingCharacters(in: .whitespaces))
    }
}

