import Foundation
import KVTCCache
import KVTCGGUF

/// The token block of a llama-server slot file, in either layout llama-server reads.
///
/// `llama_state_seq_save_file` stores a list of 32-bit words where a plain program stores its
/// token ids. llama-server's slot saves used to write the slot's tokens there; current
/// versions write `server_tokens::serialize()` instead: a -1 marker (`LLAMA_TOKEN_NULL`, never
/// a token id), a format version u32, then the token count and ids, then the count of media
/// chunks and their start indices and bytes. Both layouts are still read by llama-server.
public enum SlotTokens: Sendable, Equatable {
    /// A plain list of token ids (older llama-server versions, `llama_state_seq_save_file`).
    case plain([Int32])
    /// `server_tokens` layout `version` with text tokens only (no media chunks).
    case serverTokens(version: UInt32, [Int32])

    /// The `server_tokens` format version this reader and writer know.
    public static let serverTokensVersion: UInt32 = 1
    static let marker: Int32 = -1

    /// The token ids.
    public var tokens: [Int32] {
        switch self {
        case .plain(let t), .serverTokens(_, let t): return t
        }
    }

    /// The same layout holding `tokens`.
    public func holding(_ tokens: [Int32]) -> SlotTokens {
        switch self {
        case .plain: return .plain(tokens)
        case .serverTokens(let v, _): return .serverTokens(version: v, tokens)
        }
    }

    /// Reads the words a state file carries in its token block.
    ///
    /// - Throws: ``LlamaStateError/malformed(_:)`` for an unknown version, a count that does
    ///   not fit, media chunks (kvtc stores text conversations only) or trailing words.
    public init(packed words: [Int32]) throws(LlamaStateError) {
        guard let first = words.first, first == Self.marker else {
            if let bad = words.first(where: { $0 < 0 }) { throw .malformed("token id \(bad) in the slot's token list") }
            self = .plain(words)
            return
        }
        guard words.count >= 3 else { throw .malformed("a server_tokens block of \(words.count) words") }
        let version = UInt32(bitPattern: words[1])
        guard version == Self.serverTokensVersion else {
            throw .malformed("server_tokens version \(version) (known: \(Self.serverTokensVersion))")
        }
        let count = Int(UInt32(bitPattern: words[2]))
        guard count <= words.count - 4 else { throw .malformed("server_tokens declares \(count) tokens in \(words.count) words") }
        let tokens = Array(words[3 ..< 3 + count])
        let mediaCount = UInt32(bitPattern: words[3 + count])
        guard mediaCount == 0 else { throw .malformed("the slot holds \(mediaCount) media chunks; kvtc stores text conversations only") }
        guard words.count == 4 + count else { throw .malformed("\(words.count - 4 - count) words follow the server_tokens block") }
        if let bad = tokens.first(where: { $0 < 0 }) { throw .malformed("token id \(bad) in the slot's tokens") }
        self = .serverTokens(version: version, tokens)
    }

    /// The words to write in a state file's token block.
    public var packed: [Int32] {
        switch self {
        case .plain(let t): return t
        case .serverTokens(let v, let t): return [Self.marker, Int32(bitPattern: v), Int32(t.count)] + t + [0]
        }
    }
}

extension LlamaSequenceState {
    /// The token block of a state file read as a slot's tokens (either layout).
    /// - Throws: ``LlamaStateError/malformed(_:)`` for raw sequence data (it has no token
    ///   block) or a block neither layout reads.
    public func slotTokens() throws(LlamaStateError) -> SlotTokens {
        guard case .file(_, let words) = container else { throw .malformed("raw sequence data carries no token ids") }
        return try SlotTokens(packed: words)
    }
}

/// How one llama-server writes its slots: learned from a save of its own, so that a state kvtc
/// writes for it has the stream count, K/V types, V layout and token layout it reads back.
///
/// llama-server refuses a state whose stream count or K/V types differ from its cache's
/// (`n_stream mismatch`, `mismatched key type`). A model with sliding-window layers writes
/// two caches (``windowed``): the full-context layers for every cell, then the sliding
/// layers for the cells their window still sees.
public struct SlotStateLayout: Sendable, Equatable, CustomStringConvertible {
    /// Streams of the server's cache (1 with a unified cache, else one per slot).
    public var streamCount: Int
    public var keyType: GGMLType
    public var valueType: GGMLType
    /// Whether V is stored feature-major (llama.cpp without flash attention).
    public var valuesTransposed: Bool
    /// Whether the token block uses `server_tokens` (else a plain token list).
    public var serverTokens: Bool
    /// Whether a second, sliding-window cache follows the first.
    public var windowed: Bool

    public init(streamCount: Int = 1, keyType: GGMLType = .f16, valueType: GGMLType = .f16,
                valuesTransposed: Bool = true, serverTokens: Bool = false, windowed: Bool = false) {
        self.streamCount = streamCount
        self.keyType = keyType
        self.valueType = valueType
        self.valuesTransposed = valuesTransposed
        self.serverTokens = serverTokens
        self.windowed = windowed
    }

    /// The layout of `state`, a file saved by the server (with at least one cell).
    public init(of state: LlamaSequenceState) throws(LlamaStateError) {
        let s = try state.occupiedStream()
        let stream = state.streams[s]
        guard let first = stream.layers.first else { throw .malformed("the state has no layers") }
        let window = (state.windowStreams ?? []).filter { !$0.cells.isEmpty }
        for other in window where other.valuesTransposed != stream.valuesTransposed {
            throw .mismatch("the sliding-window cache's V layout differs from the full cache's")
        }
        if let windowStreams = state.windowStreams, windowStreams.count != state.streams.count {
            throw .mismatch("\(windowStreams.count) sliding-window streams for \(state.streams.count) full-cache streams")
        }
        for (l, layer) in (stream.layers + window.flatMap(\.layers)).enumerated() where layer.keyType != first.keyType || layer.valueType != first.valueType {
            throw .mismatch("layer \(l) holds K/V of \(layer.keyType)/\(layer.valueType), layer 0 \(first.keyType)/\(first.valueType)")
        }
        let isServerTokens: Bool
        if case .serverTokens = try state.slotTokens() { isServerTokens = true } else { isServerTokens = false }
        self.init(streamCount: state.streams.count, keyType: first.keyType, valueType: first.valueType,
                  valuesTransposed: stream.valuesTransposed, serverTokens: isServerTokens, windowed: state.windowStreams != nil)
    }

    /// A state file in this layout holding `cache` (one cell per token, all in sequence 0,
    /// in the first stream) for `tokens`.
    public func state(tokens: [Int32], cache: KVCache) throws(LlamaStateError) -> LlamaSequenceState {
        try shell(tokens: tokens, cache: cache).replacingRows(with: cache)
    }

    /// Writes ``state(tokens:cache:)`` to `url`, encoding one layer at a time.
    public func write(tokens: [Int32], cache: KVCache, to url: URL) throws {
        try shell(tokens: tokens, cache: cache).write(to: url, rows: cache)
    }

    /// The state of ``state(tokens:cache:)`` with empty K/V arrays.
    func shell(tokens: [Int32], cache: KVCache) throws(LlamaStateError) -> LlamaSequenceState {
        let n = cache.tokenCount, g = cache.geometry, w = g.featuresPerLayer
        guard tokens.count == n else { throw .mismatch("\(tokens.count) token ids for a cache of \(n) tokens") }
        guard n > 0 else { throw .mismatch("an empty cache") }
        for type in [keyType, valueType] where w % type.blockSize != 0 {
            throw .mismatch("\(w) values per layer are not whole \(type) blocks")
        }
        let cells = cache.positions.map { LlamaStateCell(position: Int32($0), sequences: [0]) }
        func layers(_ count: Int) -> [LlamaStateLayer] {
            (0..<count).map { _ in
                LlamaStateLayer(keyType: keyType, keyRowBytes: w / keyType.blockSize * keyType.blockBytes, keys: [],
                                valueType: valueType,
                                valueRowBytes: valuesTransposed ? valueType.blockBytes : w / valueType.blockSize * valueType.blockBytes,
                                valueWidth: valuesTransposed ? w : nil, values: [])
            }
        }
        func block(_ cells: [LlamaStateCell], layers: [LlamaStateLayer]) -> [LlamaStateStream] {
            [LlamaStateStream(cells: cells, valuesTransposed: valuesTransposed, layers: layers)]
                + (1..<max(streamCount, 1)).map { _ in LlamaStateStream(cells: [], valuesTransposed: false, layers: []) }
        }
        let (full, sliding) = try LlamaSequenceState.blockLayers(cache.layerAttention, layers: g.layers, windowed: windowed)
        var window: [LlamaStateStream]?
        if windowed {
            // What llama.cpp keeps of a sliding layer: the cells its window still sees from
            // the newest position (it saves no others).
            let span = sliding.compactMap { cache.layerAttention[$0].window }.max() ?? 0
            let newest = cache.positions.max() ?? 0
            window = block(cells.filter { Int($0.position) > newest - span }, layers: layers(sliding.count))
        }
        let tokenBlock: SlotTokens = serverTokens ? .serverTokens(version: SlotTokens.serverTokensVersion, tokens) : .plain(tokens)
        return LlamaSequenceState(container: .file(version: LlamaSequenceState.supportedVersions.last!, tokens: tokenBlock.packed),
                                  streams: block(cells, layers: layers(full.count)), windowStreams: window)
    }

    public var description: String {
        "\(streamCount) stream(s)\(windowed ? " x 2 caches (full, sliding window)" : ""), K \(keyType), V \(valueType)\(valuesTransposed ? " transposed" : ""), \(serverTokens ? "server_tokens" : "plain") token block"
    }
}
