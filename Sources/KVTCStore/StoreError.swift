import KVTCCache
import KVTCCodec

/// Errors of the cache store.
public enum StoreError: Error, Equatable, CustomStringConvertible {
    /// The cache and the token ids disagree (count, positions, geometry).
    case mismatch(String)
    /// A token id outside `0..<2^32`.
    case invalidToken(Int)
    /// The store's settings are unusable.
    case configuration(String)
    /// The chunk codec failed to compress a chunk.
    case codec(ChunkCodecError)
    /// An entry's bytes are not a valid entry (format, payload).
    case invalidEntry(String)
    /// A well-formed entry of another producer or namespace, or whose contents do not hash to
    /// the key it was stored under.
    case foreignEntry(String)
    /// A well-formed entry whose tokens do not fit the store's chunk layout.
    case misplacedEntry(String)
    /// An entry is already stored under the key (uploads never overwrite).
    case exists(String)
    /// A tier failed.
    case tier(TierError)

    public var description: String {
        switch self {
        case .mismatch(let m): return "cache and tokens do not match: \(m)"
        case .invalidToken(let t): return "token id \(t) cannot be keyed"
        case .configuration(let m): return "invalid store configuration: \(m)"
        case .codec(let e): return "chunk codec failed: \(e)"
        case .invalidEntry(let m): return "invalid store entry: \(m)"
        case .foreignEntry(let m): return "foreign store entry: \(m)"
        case .misplacedEntry(let m): return "misplaced store entry: \(m)"
        case .exists(let k): return "an entry is already stored under \(k)"
        case .tier(let e): return e.description
        }
    }
}

/// Why a store's chunk codec failed, with the codec's own error where the store knows its
/// type.
public indirect enum ChunkCodecError: Error, Equatable, CustomStringConvertible {
    /// The KVTC codec's error (``KVTCCompressor``).
    case kvtc(KVTCError)
    /// The exact-rows codec's error (``ExactCompressor``).
    case exact(StoreError)
    /// Another codec's error (a baseline, say), by its description.
    case other(String)

    /// Classifies an error thrown by a ``CacheCompressor``.
    public init(_ error: any Error) {
        switch error {
        case let e as KVTCError: self = .kvtc(e)
        case let e as StoreError: self = .exact(e)
        default: self = .other(String(describing: error))
        }
    }

    public var description: String {
        switch self {
        case .kvtc(let e): return e.description
        case .exact(let e): return e.description
        case .other(let m): return m
        }
    }
}

/// Errors of a storage tier.
public enum TierError: Error, Equatable, CustomStringConvertible {
    /// The entry is larger than the tier can ever hold.
    case entryTooLarge(bytes: Int, capacity: Int)
    /// A file system or network operation failed.
    case io(String)
    /// Another process holds the tier (its directory is locked).
    case inUse(String)
    /// The directory holds something other than a tier of this format.
    case notATier(String)

    public var description: String {
        switch self {
        case .entryTooLarge(let b, let c): return "entry of \(b) bytes exceeds the tier's capacity of \(c) bytes"
        case .io(let m): return "tier I/O failed: \(m)"
        case .inUse(let p): return "\(p) is in use by another kvtc process (it holds the tier's lock); give each process its own --disk directory"
        case .notATier(let m): return "not a kvtc disk tier: \(m)"
        }
    }
}
