import Foundation
import KVTCCache
import KVTCGGUF
import KVTCNumerics

/// Why a llama.cpp state could not be read or written.
public enum LlamaStateError: Error, Equatable, CustomStringConvertible {
    /// Neither a sequence state file (`ggsq`) nor raw sequence data.
    case notAState
    /// A file version this reader does not know.
    case unsupportedVersion(UInt32, supported: [UInt32])
    /// The bytes end before the state does.
    case truncated(String)
    /// A field holds an impossible value.
    case malformed(String)
    /// A K or V tensor type other than F32, F16, BF16 and Q8_0.
    case unsupportedType(Int32)
    /// The state does not fit the model (layers, widths) or the cache it is built from.
    case mismatch(String)

    public var description: String {
        switch self {
        case .notAState: return "not a llama.cpp sequence state (no 'ggsq' file magic or sequence-data magic)"
        case .unsupportedVersion(let v, let s): return "llama.cpp sequence state version \(v) is not supported (supported: \(s.map(String.init).joined(separator: ", ")))"
        case .truncated(let m): return "llama.cpp state is truncated: \(m)"
        case .malformed(let m): return "llama.cpp state is malformed: \(m)"
        case .unsupportedType(let t): return "llama.cpp state holds K/V of ggml type \(t); supported: F32, F16, BF16, Q8_0"
        case .mismatch(let m): return "llama.cpp state does not fit: \(m)"
        }
    }
}

/// One KV cell of a llama.cpp sequence state: its position and the sequences it belongs to.
public struct LlamaStateCell: Sendable, Equatable, Codable {
    public var position: Int32
    public var sequences: [Int32]
    /// Per-cell extra fields of models with M-RoPE or per-layer embeddings (empty otherwise).
    public var extra: [UInt8]

    public init(position: Int32, sequences: [Int32], extra: [UInt8] = []) {
        self.position = position
        self.sequences = sequences
        self.extra = extra
    }
}

/// The K and V rows of one layer as llama.cpp wrote them.
public struct LlamaStateLayer: Sendable, Equatable {
    public var keyType: GGMLType
    /// Bytes per cell of K (`ggml_row_size(type, n_embd_k_gqa)`).
    public var keyRowBytes: Int
    /// K rows, cell-major.
    public var keys: [UInt8]
    public var valueType: GGMLType
    /// Bytes per cell of V when not transposed; element bytes when transposed.
    public var valueRowBytes: Int
    /// Values per cell (`n_embd_v_gqa`); written only when V is transposed.
    public var valueWidth: Int?
    /// V rows (cell-major), or V columns (feature-major) when transposed.
    public var values: [UInt8]

    public init(keyType: GGMLType, keyRowBytes: Int, keys: [UInt8], valueType: GGMLType, valueRowBytes: Int,
                valueWidth: Int?, values: [UInt8]) {
        self.keyType = keyType
        self.keyRowBytes = keyRowBytes
        self.keys = keys
        self.valueType = valueType
        self.valueRowBytes = valueRowBytes
        self.valueWidth = valueWidth
        self.values = values
    }
}

extension LlamaStateLayer {
    /// Bytes one cell's K and V take in this layer, in the state's own types.
    public var bytesPerCell: Int { keyRowBytes + (valueWidth.map { $0 * valueRowBytes } ?? valueRowBytes) }
}

/// One stream of a sequence state: its cells and, when it has any, their K and V.
public struct LlamaStateStream: Sendable, Equatable {
    public var cells: [LlamaStateCell]
    /// Whether V is stored transposed (feature-major), as llama.cpp does without flash attention.
    public var valuesTransposed: Bool
    public var layers: [LlamaStateLayer]

    public init(cells: [LlamaStateCell], valuesTransposed: Bool, layers: [LlamaStateLayer]) {
        self.cells = cells
        self.valuesTransposed = valuesTransposed
        self.layers = layers
    }
}

/// llama.cpp's saved sequence state: the file of `llama_state_seq_save_file` (magic `ggsq`,
/// version, token ids, sequence data) or the raw bytes of `llama_state_seq_get_data`
/// (sequence-data magic, sequence id, sequence data).
///
/// The sequence data is: stream count u32; per stream a cell count u32 and, for a non-empty
/// stream, per cell its position i32, sequence-id count u32, extra fields, sequence ids i32;
/// then `v_trans` u32, layer count u32, per layer K type i32, K row size u64 and the K rows;
/// then per layer V type i32 and either V row size u64 and the V rows, or (transposed) V
/// element size u32, V width u32 and, per feature, that feature of every cell.
public struct LlamaSequenceState: Sendable, Equatable {
    /// How the state arrived.
    public enum Container: Sendable, Equatable {
        /// `llama_state_seq_save_file`, with its version and the token ids it saved.
        case file(version: UInt32, tokens: [Int32])
        /// `llama_state_seq_get_data`, with the sequence id it was taken from.
        case sequenceData(sequence: Int32)
    }

    public static let fileMagic: UInt32 = 0x6767_7371  // 'ggsq'
    public static let sequenceDataMagic: UInt32 = 0xAF14_3CD8
    /// File versions this reader knows (what current llama.cpp releases write).
    public static let supportedVersions: [UInt32] = [3]

    public var container: Container
    /// The cache's streams (for a model with sliding-window layers: its full-context layers').
    public var streams: [LlamaStateStream]
    /// The streams of the second cache of a model with sliding-window layers (llama.cpp's
    /// `llama_kv_cache_iswa` writes its full-context cache, then this one): its sliding
    /// layers, holding only the cells their window still sees. `nil` for other models.
    public var windowStreams: [LlamaStateStream]?

    public init(container: Container, streams: [LlamaStateStream], windowStreams: [LlamaStateStream]? = nil) {
        self.container = container
        self.streams = streams
        self.windowStreams = windowStreams
    }

    /// The token ids a state file saved (empty for raw sequence data).
    public var tokens: [Int32] {
        if case .file(_, let t) = container { return t }
        return []
    }

    /// Whether `bytes` start like a state file or raw sequence data.
    public static func isState(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 4 else { return false }
        let magic = UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
        return magic == fileMagic || magic == sequenceDataMagic
    }

    /// Parses a state. `cellExtraBytes` is the size of the per-cell extra fields of the
    /// model's architecture (0 for llama-family models).
    public init(bytes: [UInt8], cellExtraBytes: Int = 0) throws(LlamaStateError) {
        var r = ByteReader(bytes)
        func fail(_ what: String) -> LlamaStateError { .truncated("ends inside \(what) at byte \(bytes.count - r.remaining)") }
        let magic: UInt32
        do { magic = try r.u32() } catch { throw .notAState }
        switch magic {
        case Self.fileMagic:
            let version: UInt32, count: Int
            do { version = try r.u32() } catch { throw fail("the version") }
            guard Self.supportedVersions.contains(version) else { throw .unsupportedVersion(version, supported: Self.supportedVersions) }
            do { count = Int(try r.u32()) } catch { throw fail("the token count") }
            guard count <= r.remaining / 4 else { throw .truncated("\(count) token ids declared, \(r.remaining / 4) fit") }
            var tokens = [Int32](repeating: 0, count: count)
            do { for i in 0..<count { tokens[i] = Int32(bitPattern: try r.u32()) } } catch { throw fail("the token ids") }
            container = .file(version: version, tokens: tokens)
        case Self.sequenceDataMagic:
            let sequence: Int32
            do { sequence = Int32(bitPattern: try r.u32()) } catch { throw fail("the sequence id") }
            container = .sequenceData(sequence: sequence)
        default:
            throw .notAState
        }
        streams = try Self.readStreams(&r, cellExtraBytes: cellExtraBytes, total: bytes.count)
        // A second block is the sliding-window cache of a model with two caches.
        windowStreams = r.remaining > 0 ? try Self.readStreams(&r, cellExtraBytes: cellExtraBytes, total: bytes.count) : nil
        guard r.remaining == 0 else { throw .malformed("\(r.remaining) bytes follow the sequence data") }
    }

    static func type(_ raw: Int32) throws(LlamaStateError) -> GGMLType {
        guard raw >= 0, let t = GGMLType(rawValue: UInt32(raw)), [.f32, .f16, .bf16, .q8_0].contains(t) else { throw .unsupportedType(raw) }
        return t
    }

    static func readStreams(_ r: inout ByteReader<[UInt8]>, cellExtraBytes: Int, total: Int) throws(LlamaStateError) -> [LlamaStateStream] {
        func fail(_ what: String) -> LlamaStateError { .truncated("ends inside \(what) at byte \(total - r.remaining)") }
        let streamCount: Int
        do { streamCount = Int(try r.u32()) } catch { throw fail("the stream count") }
        guard streamCount >= 1, streamCount <= 4096 else { throw .malformed("\(streamCount) streams") }
        var streams: [LlamaStateStream] = []
        for s in 0..<streamCount {
            let cellCount: Int
            do { cellCount = Int(try r.u32()) } catch { throw fail("stream \(s)'s cell count") }
            if cellCount == 0 { streams.append(LlamaStateStream(cells: [], valuesTransposed: false, layers: [])); continue }
            // Every cell takes at least 8 bytes of metadata.
            guard cellCount <= r.remaining / 8 else { throw .truncated("\(cellCount) cells declared in stream \(s)") }
            var cells: [LlamaStateCell] = []
            cells.reserveCapacity(cellCount)
            do {
                for _ in 0..<cellCount {
                    let position = Int32(bitPattern: try r.u32())
                    let n = Int(try r.u32())
                    guard n <= 256 else { throw LlamaStateError.malformed("a cell in \(n) sequences") }
                    let extra = try r.raw(cellExtraBytes)
                    var ids: [Int32] = []
                    for _ in 0..<n { ids.append(Int32(bitPattern: try r.u32())) }
                    guard position >= 0 else { throw LlamaStateError.malformed("a cell at position \(position)") }
                    cells.append(LlamaStateCell(position: position, sequences: ids, extra: extra))
                }
            } catch let e as LlamaStateError { throw e } catch { throw fail("stream \(s)'s cells") }
            let transposed: Bool, layerCount: Int
            do {
                let v = try r.u32()
                guard v <= 1 else { throw LlamaStateError.malformed("v_trans \(v)") }
                transposed = v == 1
                layerCount = Int(try r.u32())
            } catch let e as LlamaStateError { throw e } catch { throw fail("stream \(s)'s layer header") }
            guard layerCount >= 1, layerCount <= 1024 else { throw .malformed("\(layerCount) layers") }
            var layers: [LlamaStateLayer] = []
            for l in 0..<layerCount {
                do {
                    let kType = try type(Int32(bitPattern: try r.u32()))
                    let kRow = Int(try r.u64())
                    guard kRow > 0, kRow % kType.blockBytes == 0, kRow <= r.remaining / cellCount else {
                        throw LlamaStateError.malformed("layer \(l) K rows of \(kRow) bytes for \(cellCount) cells")
                    }
                    let keys = try r.raw(kRow * cellCount)
                    layers.append(LlamaStateLayer(keyType: kType, keyRowBytes: kRow, keys: keys, valueType: .f32, valueRowBytes: 0,
                                                  valueWidth: nil, values: []))
                } catch let e as LlamaStateError { throw e } catch { throw fail("layer \(l)'s keys") }
            }
            for l in 0..<layerCount {
                do {
                    let vType = try type(Int32(bitPattern: try r.u32()))
                    if transposed {
                        let element = Int(try r.u32()), width = Int(try r.u32())
                        guard vType.blockSize == 1, element == vType.blockBytes, width > 0, width <= r.remaining / (element * cellCount) else {
                            throw LlamaStateError.malformed("layer \(l) transposed V of \(width) x \(element)-byte elements")
                        }
                        layers[l].valueType = vType
                        layers[l].valueRowBytes = element
                        layers[l].valueWidth = width
                        layers[l].values = try r.raw(width * element * cellCount)
                    } else {
                        let vRow = Int(try r.u64())
                        guard vRow > 0, vRow % vType.blockBytes == 0, vRow <= r.remaining / cellCount else {
                            throw LlamaStateError.malformed("layer \(l) V rows of \(vRow) bytes for \(cellCount) cells")
                        }
                        layers[l].valueType = vType
                        layers[l].valueRowBytes = vRow
                        layers[l].values = try r.raw(vRow * cellCount)
                    }
                } catch let e as LlamaStateError { throw e } catch { throw fail("layer \(l)'s values") }
            }
            streams.append(LlamaStateStream(cells: cells, valuesTransposed: transposed, layers: layers))
        }
        return streams
    }

    /// The state's bytes, in the layout it was read from.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        emit(layerBytes: nil) { out.append(contentsOf: $0) }
        return out
    }

    /// Writes the state's bytes to `url` (replacing the file) without assembling them in
    /// memory first: a 4096-token F16 state is ~90 MB. With `rows`, the K/V of every layer
    /// are encoded from that cache one layer at a time as they are written (the state's own
    /// K/V arrays may then be empty): what ``replacingRows(with:)`` and then writing would
    /// give, without holding the encoded K/V.
    public func write(to url: URL, rows cache: KVCache? = nil) throws {
        guard FileManager.default.createFile(atPath: url.path, contents: nil) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path])
        }
        let handle = try FileHandle(forWritingTo: url)
        defer { try? handle.close() }
        var failure: (any Error)?
        let layerBytes = try cache.map { try layerEncoder(for: $0) }
        emit(layerBytes: layerBytes) { bytes in
            guard failure == nil else { return }
            do { try handle.write(contentsOf: bytes) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Where a layer's K or V bytes are: block (0: the cache, 1: the sliding-window cache),
    /// stream, layer within the stream, and whether V.
    typealias LayerBytes = (_ block: Int, _ stream: Int, _ layer: Int, _ values: Bool) -> [UInt8]

    /// The state's bytes in order, as small header pieces and whole K/V arrays (from
    /// `layerBytes` when given, else the state's own).
    private func emit(layerBytes: LayerBytes?, _ sink: ([UInt8]) -> Void) {
        var w = ByteWriter()
        func flush() { if !w.bytes.isEmpty { sink(w.bytes); w = ByteWriter() } }
        switch container {
        case .file(let version, let tokens):
            w.u32(Self.fileMagic)
            w.u32(version)
            w.u32(UInt32(tokens.count))
            for t in tokens { w.u32(UInt32(bitPattern: t)) }
        case .sequenceData(let sequence):
            w.u32(Self.sequenceDataMagic)
            w.u32(UInt32(bitPattern: sequence))
        }
        for (b, block) in ([streams] + (windowStreams.map { [$0] } ?? [])).enumerated() {
            w.u32(UInt32(block.count))
            for (si, s) in block.enumerated() {
                w.u32(UInt32(s.cells.count))
                if s.cells.isEmpty { continue }
                for c in s.cells {
                    w.u32(UInt32(bitPattern: c.position))
                    w.u32(UInt32(c.sequences.count))
                    w.raw(c.extra)
                    for id in c.sequences { w.u32(UInt32(bitPattern: id)) }
                }
                w.u32(s.valuesTransposed ? 1 : 0)
                w.u32(UInt32(s.layers.count))
                for (li, l) in s.layers.enumerated() {
                    w.u32(UInt32(l.keyType.rawValue))
                    w.u64(UInt64(l.keyRowBytes))
                    flush()
                    sink(layerBytes?(b, si, li, false) ?? l.keys)
                }
                for (li, l) in s.layers.enumerated() {
                    w.u32(UInt32(l.valueType.rawValue))
                    if s.valuesTransposed {
                        w.u32(UInt32(l.valueRowBytes))
                        w.u32(UInt32(l.valueWidth ?? 0))
                    } else {
                        w.u64(UInt64(l.valueRowBytes))
                    }
                    flush()
                    sink(layerBytes?(b, si, li, true) ?? l.values)
                }
            }
        }
        flush()
    }
}
