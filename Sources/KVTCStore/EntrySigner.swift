import Crypto
import Foundation

/// Signs and verifies raw store entries with a secret shared by the servers that trust
/// each other (`--kv-secret`): HMAC-SHA256 over a domain tag, the key and the entry.
public struct EntrySigner: Sendable {
    private let secret: [UInt8]
    private var key: SymmetricKey { SymmetricKey(data: secret) }

    /// The header carrying the signature (`sha256=<hex>`).
    public static let header = "X-KVTC-Signature"

    public init(secret: [UInt8]) { self.secret = secret }

    /// Reads a secret file (its bytes, trailing newline removed; at least 32 bytes).
    public init(contentsOf path: String) throws(StoreError) {
        guard var data = FileManager.default.contents(atPath: path).map(Array.init) else {
            throw .configuration("the secret file \(path) cannot be read")
        }
        while let last = data.last, last == 0x0A || last == 0x0D { data.removeLast() }
        guard data.count >= 32 else { throw .configuration("the secret in \(path) has \(data.count) bytes; it needs at least 32") }
        self.init(secret: data)
    }

    private func message(_ key: StoreKey, _ entry: [UInt8]) -> [UInt8] { Array("kvtc.entry.v1".utf8) + key.bytes + entry }

    /// The 32-byte authentication code of `entry` under `key`.
    public func code(_ key: StoreKey, _ entry: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: message(key, entry), using: self.key))
    }

    /// Whether `code` authenticates `entry` under `key` (constant time).
    public func isValid(code: [UInt8], _ key: StoreKey, _ entry: [UInt8]) -> Bool {
        code.count == SHA256.byteCount && HMAC<SHA256>.isValidAuthenticationCode(code, authenticating: message(key, entry), using: self.key)
    }

    /// The signature header value for `entry` under `key`.
    public func sign(_ key: StoreKey, _ entry: [UInt8]) -> String {
        "sha256=" + code(key, entry).map { String(format: "%02x", $0) }.joined()
    }

    /// Whether `signature` (a header value) signs `entry` under `key` (constant time).
    public func verify(_ signature: String?, _ key: StoreKey, _ entry: [UInt8]) -> Bool {
        // A MAC is 32 bytes, written like a key.
        guard let signature, signature.hasPrefix("sha256="), let mac = StoreKey(hex: String(signature.dropFirst(7))) else { return false }
        return isValid(code: mac.bytes, key, entry)
    }
}
