import KVTCNumerics
import Crypto
import KVTCCodec

/// A 32-byte content key of one stored entry (a chunk or a tail).
///
/// Keys are SHA-256 digests: chained over the producer identity, the previous chunk's key
/// and the chunk's token ids (see ``KeyChain``), so they are stable across processes and
/// machines and never collide between models, profiles or codec formats.
public struct StoreKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The 32 digest bytes.
    public let bytes: [UInt8]

    /// Wraps 32 bytes; returns `nil` for any other length.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        self.bytes = bytes
    }

    init<D: Digest>(digest: D) { bytes = Array(digest) }

    /// Parses 64 hexadecimal digits (either case).
    public init?(hex: String) {
        let u = Array(hex.utf8)
        guard u.count == 64 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var out = [UInt8](repeating: 0, count: 32)
        for i in 0..<32 {
            guard let hi = nibble(u[2 * i]), let lo = nibble(u[2 * i + 1]) else { return nil }
            out[i] = hi << 4 | lo
        }
        bytes = out
    }

    /// The key of the empty prefix: 32 zero bytes. The first chunk chains from it.
    public static let root = StoreKey(bytes: [UInt8](repeating: 0, count: 32))!

    /// Lowercase hexadecimal (64 digits).
    public var hex: String { hexString(bytes) }
    public var description: String { hex }

    public static func < (a: StoreKey, b: StoreKey) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }
}

/// Everything that determines the bytes of a stored entry besides the tokens: which model
/// produced the cache, which profile and codec compressed it.
///
/// Two producers that differ in any field get disjoint key spaces, so a cache made by
/// another model, profile, ratio or format can never be returned.
public struct ProducerIdentity: Hashable, Sendable, Codable, CustomStringConvertible {
    /// SHA-256 (hex) of the model weights file.
    public var modelHash: String
    /// ``Profile/contentHash`` of the profile, or empty for codecs without one.
    public var profileHash: String
    /// ``Blob/formatVersion`` (or the equivalent of another codec).
    public var codecFormatVersion: Int
    /// The codec and its setting, e.g. `kvtc 16x` or `fp16`.
    public var codec: String

    public init(modelHash: String, profileHash: String, codecFormatVersion: Int, codec: String) {
        self.modelHash = modelHash
        self.profileHash = profileHash
        self.codecFormatVersion = codecFormatVersion
        self.codec = codec
    }

    /// The identity of KVTC chunks made with `profile` at `ratio` for the model with `modelHash`.
    public init(modelHash: String, profile: Profile, ratio: Double) {
        self.init(modelHash: modelHash, profileHash: profile.contentHash,
                  codecFormatVersion: Blob.formatVersion, codec: "kvtc \(ratio)x")
    }

    /// SHA-256 over a canonical encoding of every field; the first input of every key.
    public var digest: [UInt8] {
        var sink = ByteWriter()
        sink.raw(Array("kvtc.producer.v1".utf8))
        sink.string(modelHash.lowercased())
        sink.string(profileHash.lowercased())
        sink.u64(UInt64(codecFormatVersion))
        sink.string(codec)
        return Array(SHA256.hash(data: sink.bytes))
    }

    public var description: String {
        "model \(modelHash.prefix(12)) profile \(profileHash.prefix(12)) format \(codecFormatVersion) \(codec)"
    }
}

/// Who may share stored entries: a tenant, narrowed further by an optional salt
/// (the request's `cache_salt`).
///
/// The namespace salts the first input of every key (``KeyChain/identityDigest``), so two
/// namespaces have disjoint key spaces in every tier: one tenant can neither read, nor
/// probe the presence of, nor overwrite another's entries, and a salt only ever narrows
/// sharing within its tenant.
public struct StoreNamespace: Hashable, Sendable, CustomStringConvertible {
    /// The tenant (from the server's key file; empty for a single-tenant server).
    public var tenant: String
    /// The request's `cache_salt`, if any.
    public var salt: String?

    public init(tenant: String, salt: String? = nil) {
        self.tenant = tenant
        self.salt = salt
    }

    /// The namespace of a server without tenants: keys are the producer's own, unsalted.
    public static let shared = StoreNamespace(tenant: "")

    /// `producerDigest` salted with this namespace (unchanged for ``shared``).
    func salt(_ producerDigest: [UInt8]) -> [UInt8] {
        guard self != .shared else { return producerDigest }
        var sink = ByteWriter()
        sink.raw(Array("kvtc.namespace.v1".utf8))
        sink.raw(producerDigest)
        sink.string(tenant)
        sink.u8(salt == nil ? 0 : 1)
        sink.string(salt ?? "")
        return Array(SHA256.hash(data: sink.bytes))
    }

    public var description: String {
        let t = tenant.isEmpty ? "shared" : "tenant \(tenant)"
        return salt == nil ? t : "\(t) (salted)"
    }
}

/// The kind of a stored entry.
public enum EntryKind: UInt8, Sendable, Codable {
    /// A full chunk of compressed tokens.
    case chunk = 1
    /// The exact tail of a stored prefix.
    case tail = 2

    var domain: [UInt8] { Array((self == .chunk ? "kvtc.chunk.v1" : "kvtc.tail.v1").utf8) }
}

/// Computes the chained keys of a token sequence for one producer.
///
/// The key of chunk `i` (tokens `[i*C, (i+1)*C)`) is
/// `SHA-256("kvtc.chunk.v1" | identity digest | key(i-1) | start | count | token ids)`, with
/// ``StoreKey/root`` before the first chunk. The tail of a prefix of `T` tokens is keyed the
/// same way (domain `kvtc.tail.v1`) from the key of its last full chunk and the remaining
/// `T mod C` token ids, so its key names the whole prefix.
public struct KeyChain: Sendable, Hashable {
    /// The producer all keys belong to.
    public let identity: ProducerIdentity
    /// Tokens per chunk.
    public let chunkTokens: Int
    /// ``ProducerIdentity/digest`` of ``identity``.
    public let identityDigest: [UInt8]

    /// Who shares the keys of this chain (``StoreNamespace/shared`` for a single-tenant store).
    public let namespace: StoreNamespace

    /// A key chain for `identity` with chunks of `chunkTokens` tokens (at least 1), in
    /// `namespace`.
    public init(identity: ProducerIdentity, chunkTokens: Int = 256, namespace: StoreNamespace = .shared) {
        precondition(chunkTokens > 0, "chunks need at least one token")
        self.identity = identity
        self.chunkTokens = chunkTokens
        self.namespace = namespace
        self.identityDigest = namespace.salt(identity.digest)
    }

    /// The same producer's chain in another namespace.
    public func inNamespace(_ namespace: StoreNamespace) -> KeyChain {
        namespace == self.namespace ? self : KeyChain(identity: identity, chunkTokens: chunkTokens, namespace: namespace)
    }

    /// A hasher holding everything before the token ids.
    func prefixHasher(kind: EntryKind, anchor: StoreKey, start: Int) -> SHA256 {
        var h = SHA256()
        h.update(data: kind.domain)
        h.update(data: identityDigest)
        h.update(data: anchor.bytes)
        withUnsafeBytes(of: UInt64(start).littleEndian) { h.update(bufferPointer: $0) }
        return h
    }

    static func absorb<C: Collection>(_ tokens: C, into h: inout SHA256) where C.Element == Int {
        var buf = [UInt8]()
        buf.reserveCapacity(tokens.count * 4)
        for t in tokens { withUnsafeBytes(of: UInt32(truncatingIfNeeded: t).littleEndian) { buf.append(contentsOf: $0) } }
        h.update(data: buf)
    }

    static func finish(_ h: SHA256, count: Int) -> StoreKey {
        var h = h
        withUnsafeBytes(of: UInt64(count).littleEndian) { h.update(bufferPointer: $0) }
        return StoreKey(digest: h.finalize())
    }

    /// The key of an entry of `kind` holding `tokens`, which start at token index `start`
    /// and follow the entry keyed `anchor`.
    public func key<C: Collection>(kind: EntryKind, anchor: StoreKey, start: Int, tokens: C) -> StoreKey where C.Element == Int {
        var h = prefixHasher(kind: kind, anchor: anchor, start: start)
        Self.absorb(tokens, into: &h)
        return Self.finish(h, count: tokens.count)
    }

    /// The keys of every full chunk of `tokens`, in order.
    public func chunkKeys(for tokens: [Int]) -> [StoreKey] {
        var keys: [StoreKey] = []
        var previous = StoreKey.root
        var start = 0
        while start + chunkTokens <= tokens.count {
            previous = key(kind: .chunk, anchor: previous, start: start, tokens: tokens[start..<(start + chunkTokens)])
            keys.append(previous)
            start += chunkTokens
        }
        return keys
    }

    /// The key of the tail of the prefix `tokens[0..<count]`, given the keys of its chunks.
    public func tailKey(for tokens: [Int], count: Int, chunkKeys: [StoreKey]) -> StoreKey {
        let m = count / chunkTokens
        precondition(m <= chunkKeys.count && count <= tokens.count)
        let anchor = m == 0 ? StoreKey.root : chunkKeys[m - 1]
        return key(kind: .tail, anchor: anchor, start: m * chunkTokens, tokens: tokens[(m * chunkTokens)..<count])
    }

    /// Tail keys of every prefix length in `lengths` (all with the same number of full
    /// chunks `m`, i.e. inside `[m*C, (m+1)*C)`), sharing the hashing of the common part.
    func tailKeys(for tokens: [Int], anchor: StoreKey, chunks m: Int, lengths: [Int]) -> [StoreKey] {
        let start = m * chunkTokens
        let base = prefixHasher(kind: .tail, anchor: anchor, start: start)
        // Hash incrementally: absorb one token at a time, finalize a copy at each length.
        let wanted = Set(lengths)
        var out: [Int: StoreKey] = [:]
        var h = base
        if wanted.contains(start) { out[start] = Self.finish(h, count: 0) }
        let upper = lengths.max() ?? start
        var t = start
        while t < upper {
            withUnsafeBytes(of: UInt32(truncatingIfNeeded: tokens[t]).littleEndian) { h.update(bufferPointer: $0) }
            t += 1
            if wanted.contains(t) { out[t] = Self.finish(h, count: t - start) }
        }
        return lengths.map { out[$0]! }
    }
}
