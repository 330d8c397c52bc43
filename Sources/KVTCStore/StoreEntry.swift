import KVTCNumerics
/// One stored entry: a chunk or a tail, self-describing so that its key can be recomputed
/// from its contents and checked on every read and upload.
///
/// Layout (little-endian): magic `KVTCSTE1` | kind u8 | identity digest (32) | anchor key
/// (32) | start u64 | keyed token count u32 | token ids u32... | exact start u64 |
/// payload length u64 | payload.
///
/// - A chunk's payload is the chunk codec's bytes for tokens `[start, start + count)`.
/// - A tail's payload is ``ExactRows`` for tokens `[exactStart, start + count)`, where
///   `exactStart <= start`: the tail may reach back into the last chunk so it always holds
///   the most recent tokens exactly.
public struct StoreEntry: Sendable, Equatable {
    static let magic = Array("KVTCSTE1".utf8)

    /// Chunk or tail.
    public var kind: EntryKind
    /// ``ProducerIdentity/digest`` of the producer.
    public var identityDigest: [UInt8]
    /// Key of the preceding chunk (``StoreKey/root`` for the first).
    public var anchor: StoreKey
    /// Index of the first keyed token in the sequence.
    public var start: Int
    /// The keyed token ids (a whole chunk, or the tokens after the last full chunk).
    public var tokens: [Int]
    /// Index of the first token held in ``payload`` (``start`` for chunks).
    public var exactStart: Int
    /// Codec bytes (chunks) or ``ExactRows`` bytes (tails).
    public var payload: [UInt8]

    public init(kind: EntryKind, identityDigest: [UInt8], anchor: StoreKey, start: Int, tokens: [Int],
                exactStart: Int, payload: [UInt8]) {
        self.kind = kind
        self.identityDigest = identityDigest
        self.anchor = anchor
        self.start = start
        self.tokens = tokens
        self.exactStart = exactStart
        self.payload = payload
    }

    /// Index one past the last token.
    public var end: Int { start + tokens.count }

    /// The key this entry must be stored under.
    public func key(in chain: KeyChain) -> StoreKey {
        chain.key(kind: kind, anchor: anchor, start: start, tokens: tokens)
    }

    /// The entry's bytes.
    public func encoded() -> [UInt8] {
        var s = ByteWriter(capacity: 128 + 4 * tokens.count + payload.count)
        s.raw(Self.magic)
        s.u8(kind.rawValue)
        s.raw(identityDigest)
        s.raw(anchor.bytes)
        s.u64(UInt64(start))
        s.u32(UInt32(tokens.count))
        for t in tokens { s.u32(UInt32(truncatingIfNeeded: t)) }
        s.u64(UInt64(exactStart))
        s.u64(UInt64(payload.count))
        s.raw(payload)
        return s.bytes
    }

    /// Parses an entry and checks that it belongs under `key` in `chain`: same producer,
    /// and the key recomputed from its anchor and tokens equals `key`.
    public init(bytes: [UInt8], key: StoreKey, chain: KeyChain) throws(StoreError) {
        var r = ByteReader(bytes)
        do {
            guard try r.raw(8) == Self.magic else { throw StoreError.invalidEntry("bad magic") }
            guard let kind = EntryKind(rawValue: try r.u8()) else { throw StoreError.invalidEntry("unknown kind") }
            let identity = try r.raw(32)
            let anchor = StoreKey(bytes: try r.raw(32))!
            let start = try r.u64()
            let count = Int(try r.u32())
            guard start < 1 << 40, count <= r.remaining / 4 else { throw StoreError.invalidEntry("token range") }
            var tokens = [Int](repeating: 0, count: count)
            for i in 0..<count { tokens[i] = Int(try r.u32()) }
            let exactStart = try r.u64()
            let length = try r.u64()
            guard exactStart <= start, length == UInt64(r.remaining) else {
                throw StoreError.invalidEntry("payload length \(length), \(r.remaining) bytes remain")
            }
            let payload = try r.raw(Int(length))
            self.init(kind: kind, identityDigest: identity, anchor: anchor, start: Int(start), tokens: tokens,
                      exactStart: Int(exactStart), payload: payload)
        } catch let e as StoreError {
            throw e
        } catch {
            throw .invalidEntry("truncated")
        }
        guard identityDigest == chain.identityDigest else {
            throw .foreignEntry("made by another producer or namespace")
        }
        if kind == .chunk {
            guard tokens.count == chain.chunkTokens, start % chain.chunkTokens == 0, exactStart == start else {
                throw .misplacedEntry("chunk shape does not match the store's chunk size")
            }
        } else {
            guard tokens.count < chain.chunkTokens, start % chain.chunkTokens == 0 else {
                throw .misplacedEntry("tail shape does not match the store's chunk size")
            }
        }
        guard self.key(in: chain) == key else { throw .foreignEntry("contents do not match key \(key)") }
    }
}
