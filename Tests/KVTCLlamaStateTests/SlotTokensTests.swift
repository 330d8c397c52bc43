import Foundation
import KVTCCache
import KVTCLlamaState
import Testing

/// The two token-block layouts of llama-server slot files.
struct SlotTokensTests {
    @Test func plainListsAndServerTokensRoundTrip() throws {
        let tokens: [Int32] = [1, 4093, 198, 19556, 2]
        #expect(try SlotTokens(packed: tokens) == .plain(tokens))
        let server = SlotTokens.serverTokens(version: 1, tokens)
        #expect(server.packed == [-1, 1, 5] + tokens + [0])
        #expect(try SlotTokens(packed: server.packed) == server)
        #expect(try SlotTokens(packed: []) == .plain([]))
    }

    @Test func damagedBlocksAreRefused() {
        let good = SlotTokens.serverTokens(version: 1, [5, 6, 7]).packed
        var unknownVersion = good; unknownVersion[1] = 2
        var tooMany = good; tooMany[2] = 40
        var media = good; media[media.count - 1] = 1
        for words in [unknownVersion, tooMany, media, good + [0], [-1, 1], [3, -7, 9]] {
            #expect(throws: LlamaStateError.self) { _ = try SlotTokens(packed: words) }
        }
    }
}

/// The slot-file layout of a model with sliding-window layers: two caches, the second
/// holding the sliding layers' rows of the cells their window still sees.
struct WindowedSlotLayoutTests {
    @Test func twoCachesRoundTripAndKeepOnlyTheWindow() throws {
        let geometry = KVGeometry(layers: 4, kvHeads: 1, headDim: 8)
        let rope = RoPE(layout: .half, theta: 10_000, rotaryDims: 8)
        let layers = [LayerAttention(rope: rope, window: 4), LayerAttention(rope: rope),
                      LayerAttention(rope: rope, window: 4), LayerAttention(rope: rope)]
        let n = 10, p = geometry.featuresPerToken
        let keys = (0..<(n * p)).map { Float(($0 * 37) % 101) / 50 - 1 }, values = keys.map { -$0 / 2 }
        let cache = try KVCache(geometry: geometry, rope: rope, layerAttention: layers, positions: Array(0..<n),
                                keys: keys, values: values)
        let tokens = (0..<n).map { Int32(100 + $0) }
        for transposed in [false, true] {
            let layout = SlotStateLayout(streamCount: 2, valuesTransposed: transposed, serverTokens: true, windowed: true)
            let encoded = try layout.state(tokens: tokens, cache: cache).encoded()
            let state = try LlamaSequenceState(bytes: encoded)
            #expect(try SlotStateLayout(of: state) == layout)
            // Written layer by layer to a file: the same bytes.
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("kvtc-slot-\(UUID().uuidString).bin")
            defer { try? FileManager.default.removeItem(at: file) }
            try layout.write(tokens: tokens, cache: cache, to: file)
            #expect(Array(try Data(contentsOf: file)) == encoded)
            #expect(state.streams[0].cells.count == n && state.streams[0].layers.count == 2)
            let window = try #require(state.windowStreams)
            #expect(window.count == 2 && window[0].cells.map(\.position) == [6, 7, 8, 9] && window[0].layers.count == 2)
            let back = try state.cache(geometry: geometry, rope: rope, layerAttention: layers)
            let w = geometry.featuresPerLayer
            for t in 0..<n {
                for l in 0..<4 {
                    let kept = layers[l].window == nil || t >= 6
                    for j in 0..<w {
                        let i = t * p + l * w + j
                        // F16 storage: values in [-1, 1] round to within 2^-11.
                        #expect(abs(back.keys[i] - (kept ? keys[i] : 0)) <= 1e-3)
                        #expect(abs(back.values[i] - (kept ? values[i] : 0)) <= 1e-3)
                    }
                }
            }
            // Without the model's layers the second cache cannot be placed: refused, typed.
            #expect(throws: LlamaStateError.self) { _ = try state.cache(geometry: geometry, rope: rope) }
        }
    }
}
