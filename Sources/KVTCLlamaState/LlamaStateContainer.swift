import Foundation
import KVTCNumerics

/// A KVTC blob that remembers it came from a llama.cpp sequence state: everything of the
/// state but its K and V (container, version, token ids, streams, cells, `v_trans`, the K/V
/// types and row sizes of every layer), the exact (protected) cells' K and V in the state's
/// own bytes, then the blob of the rows (whose protected rows are zeros).
///
/// Layout: magic `KVTCLLS1` | header length u32 | header (JSON, with the exact cells'
/// indices) | CRC-32 of the header u32 | exact bytes' length u64 | their DEFLATE stream's
/// length u64 | the stream | CRC-32 of the exact bytes u32 | blob. `kvtc decompress` writes such a file back as a state llama.cpp
/// loads, the exact cells bit for bit as they were read.
public struct LlamaStateContainer: Sendable, Equatable {
    public static let magic = Array("KVTCLLS1".utf8)

    /// The state with empty K and V (its shape, cells and types).
    public var state: LlamaSequenceState
    /// The KVTC blob of the rows.
    public var blob: [UInt8]
    /// The cells kept exactly (indices into the occupied stream), and their bytes.
    public var exactCells: [Int]
    public var exactBytes: [UInt8]

    public init(state: LlamaSequenceState, blob: [UInt8], exactCells: [Int] = [], exactBytes: [UInt8] = []) {
        self.exactCells = exactCells
        self.exactBytes = exactBytes
        var stripped = state
        for s in stripped.streams.indices {
            for l in stripped.streams[s].layers.indices {
                stripped.streams[s].layers[l].keys = []
                stripped.streams[s].layers[l].values = []
            }
        }
        self.state = stripped
        self.blob = blob
    }

    public static func isContainer(_ bytes: [UInt8]) -> Bool { bytes.count >= 8 && Array(bytes[0..<8]) == magic }

    struct Header: Codable {
        struct Layer: Codable { var kType: UInt32; var kRow: Int; var vType: UInt32; var vRow: Int; var vWidth: Int? }
        struct Stream: Codable { var positions: [Int32]; var sequences: [[Int32]]; var extra: [[UInt8]]?; var vTrans: Bool; var layers: [Layer] }
        var kind: String
        var version: UInt32?
        var tokens: [Int32]?
        var sequence: Int32?
        var streams: [Stream]
        var exactCells: [Int]?
    }

    public func encoded() -> [UInt8] {
        var h = Header(kind: "file", streams: [])
        switch state.container {
        case .file(let v, let t): h.version = v; h.tokens = t
        case .sequenceData(let s): h.kind = "sequence-data"; h.sequence = s
        }
        h.streams = state.streams.map { s in
            Header.Stream(positions: s.cells.map(\.position), sequences: s.cells.map(\.sequences),
                          extra: s.cells.contains { !$0.extra.isEmpty } ? s.cells.map(\.extra) : nil, vTrans: s.valuesTransposed,
                          layers: s.layers.map { .init(kType: $0.keyType.rawValue, kRow: $0.keyRowBytes, vType: $0.valueType.rawValue,
                                                       vRow: $0.valueRowBytes, vWidth: $0.valueWidth) })
        }
        h.exactCells = exactCells
        let json = Array((try? JSONEncoder().encode(h)) ?? Data())
        var w = ByteWriter(capacity: json.count + exactBytes.count + blob.count + 32)
        w.raw(Self.magic)
        w.u32(UInt32(json.count))
        w.raw(json)
        w.u32(Deflate.crc32(json))
        let deflated = (try? Deflate.compress(exactBytes, level: 6)) ?? []
        w.u64(UInt64(exactBytes.count))
        w.u64(UInt64(deflated.count))
        w.raw(deflated)
        w.u32(Deflate.crc32(exactBytes))
        w.raw(blob)
        return w.bytes
    }

    public init(bytes: [UInt8]) throws(LlamaStateError) {
        guard Self.isContainer(bytes) else { throw .malformed("not a kvtc llama-state container") }
        var r = ByteReader(bytes, offset: 8)
        let json: [UInt8], crc: UInt32, exact: [UInt8], exactCRC: UInt32
        do {
            let n = Int(try r.u32())
            guard n <= r.remaining else { throw LlamaStateError.truncated("the container header needs \(n) bytes") }
            json = try r.raw(n)
            crc = try r.u32()
            let e = try r.u64(), stored = try r.u64()
            guard stored <= UInt64(r.remaining) else { throw LlamaStateError.truncated("the exact cells need \(stored) bytes") }
            // Bounded before inflating: DEFLATE expands at most ~1032x.
            guard e <= stored * 1032 + 64 else { throw LlamaStateError.malformed("the exact cells declare \(e) bytes from \(stored)") }
            let deflated = try r.raw(Int(stored))
            do { exact = e == 0 ? [] : try Deflate.decompress(deflated, count: Int(e)) } catch {
                throw LlamaStateError.malformed("the exact cells do not inflate")
            }
            exactCRC = try r.u32()
        } catch let e as LlamaStateError { throw e } catch { throw .truncated("the container header") }
        guard Deflate.crc32(json) == crc else { throw .malformed("the container header's checksum does not match") }
        guard Deflate.crc32(exact) == exactCRC else { throw .malformed("the exact cells' checksum does not match") }
        let h: Header
        do { h = try JSONDecoder().decode(Header.self, from: Data(json)) } catch { throw .malformed("container header: \(error)") }
        let container: LlamaSequenceState.Container
        switch h.kind {
        case "file":
            guard let v = h.version, LlamaSequenceState.supportedVersions.contains(v) else {
                throw .unsupportedVersion(h.version ?? 0, supported: LlamaSequenceState.supportedVersions)
            }
            container = .file(version: v, tokens: h.tokens ?? [])
        case "sequence-data": container = .sequenceData(sequence: h.sequence ?? 0)
        default: throw .malformed("container kind \(h.kind)")
        }
        var streams: [LlamaStateStream] = []
        for s in h.streams {
            guard s.sequences.count == s.positions.count, (s.extra?.count ?? s.positions.count) == s.positions.count else {
                throw .malformed("container cells disagree in count")
            }
            let cells = s.positions.indices.map { LlamaStateCell(position: s.positions[$0], sequences: s.sequences[$0], extra: s.extra?[$0] ?? []) }
            var layers: [LlamaStateLayer] = []
            for l in s.layers {
                let kType = try LlamaSequenceState.type(Int32(bitPattern: l.kType)), vType = try LlamaSequenceState.type(Int32(bitPattern: l.vType))
                layers.append(LlamaStateLayer(keyType: kType, keyRowBytes: l.kRow, keys: [], valueType: vType, valueRowBytes: l.vRow,
                                              valueWidth: l.vWidth, values: []))
            }
            streams.append(LlamaStateStream(cells: cells, valuesTransposed: s.vTrans, layers: layers))
        }
        state = LlamaSequenceState(container: container, streams: streams)
        exactCells = h.exactCells ?? []
        exactBytes = exact
        blob = Array(bytes[(bytes.count - r.remaining)...])
    }
}
