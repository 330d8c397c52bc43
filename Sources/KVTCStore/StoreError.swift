import KVTCCache

/// Errors of the cache store.
public enum StoreError: Error, Equatable, CustomStringConvertible {
    /// The cache and the token ids disagree (count, positions, geometry).
    case mismatch(String)
    /// A token id outside `0..<2^32`.
    case invalidToken(Int)
    /// The store's settings are unusable.
    case configuration(String)
    /// The chunk codec failed.
    case codec(String)
    /// An entry's bytes are not a valid entry for the key they were stored under.
    case invalidEntry(String)
    /// A tier failed.
    case tier(TierError)

    public var description: String {
        switch self {
        case .mismatch(let m): return "cache and tokens do not match: \(m)"
        case .invalidToken(let t): return "token id \(t) cannot be keyed"
        case .configuration(let m): return "invalid store configuration: \(m)"
        case .codec(let m): return "chunk codec failed: \(m)"
        case .invalidEntry(let m): return "invalid store entry: \(m)"
        case .tier(let e): return e.description
        }
    }
}

/// Errors of a storage tier.
public enum TierError: Error, Equatable, CustomStringConvertible {
    /// The entry is larger than the tier can ever hold.
    case entryTooLarge(bytes: Int, capacity: Int)
    /// A file system or network operation failed.
    case io(String)

    public var description: String {
        switch self {
        case .entryTooLarge(let b, let c): return "entry of \(b) bytes exceeds the tier's capacity of \(c) bytes"
        case .io(let m): return "tier I/O failed: \(m)"
        }
    }
}
