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
