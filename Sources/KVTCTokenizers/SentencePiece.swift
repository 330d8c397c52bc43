/// User-defined tokens (GGUF token type 4) and how they cut text into fragments.
///
/// As llama.cpp does, each token is cut out of the text wherever it occurs, longest token
/// first over the whole text (not leftmost first), before the remaining fragments are
/// tokenized. Only tokens that occur in the text are tried, so the cost stays proportional
/// to the text, not to the number of user-defined tokens.
struct UserDefinedTokens: Sendable {
    /// (bytes, id), longest first.
    let tokens: [([UInt8], Int)]
    /// The same tokens bucketed by first byte, to find which occur in a text.
    let matcher: SpecialTokenMatcher
    /// For each bucket entry's id, its index in `tokens`.
    let order: [Int: Int]

    init(_ tokens: [(String, Int)]) {
        let sorted = tokens.map { (Array($0.0.utf8), $0.1) }.filter { !$0.0.isEmpty }
            .enumerated().sorted { $0.element.0.count != $1.element.0.count ? $0.element.0.count > $1.element.0.count : $0.offset < $1.offset }
            .map(\.element)
        self.tokens = sorted
        self.matcher = SpecialTokenMatcher(sorted.map { (String(decoding: $0.0, as: UTF8.self), $0.1) })
        var order: [Int: Int] = [:]
        for (i, t) in sorted.enumerated() { order[t.1] = i }
        self.order = order
    }

    /// One piece of a text: ordinary bytes, or a user-defined token.
    enum Fragment: Equatable {
        case text(Range<Int>)
        case token(Int)
    }

    /// Cuts `bytes` into ordinary runs and user-defined tokens.
    func partition(_ bytes: [UInt8]) -> [Fragment] {
        guard !tokens.isEmpty, !bytes.isEmpty else { return [.text(0..<bytes.count)] }
        // Which tokens occur anywhere in the text (every match at every position).
        var present = Set<Int>()
        for i in 0..<bytes.count {
            for (_, id) in matcher.matches(bytes, at: i) { present.insert(id) }
        }
        guard !present.isEmpty else { return [.text(0..<bytes.count)] }
        var fragments: [Fragment] = [.text(0..<bytes.count)]
        for index in present.compactMap({ order[$0] }).sorted() {
            let (token, id) = tokens[index]
            var next: [Fragment] = []
            for fragment in fragments {
                guard case .text(let range) = fragment else { next.append(fragment); continue }
                var start = range.lowerBound, i = range.lowerBound
                while i + token.count <= range.upperBound {
                    if bytes[i] == token[0] && bytes[i..<(i + token.count)].elementsEqual(token) {
                        if i > start { next.append(.text(start..<i)) }
                        next.append(.token(id))
                        i += token.count
                        start = i
                    } else {
                        i += 1
                    }
                }
                if start < range.upperBound { next.append(.text(start..<range.upperBound)) }
            }
            fragments = next
        }
        return fragments
    }
}

extension SpecialTokenMatcher {
    /// Every token starting at `i` in `bytes`: lengths and ids, longest first.
    func matches(_ bytes: [UInt8], at i: Int) -> [(Int, Int)] {
        var out: [(Int, Int)] = []
        for (token, id) in candidates(startingWith: bytes[i]) where token.count <= bytes.count - i {
            var equal = true
            for k in 1..<token.count where bytes[i + k] != token[k] { equal = false; break }
            if equal { out.append((token.count, id)) }
        }
        return out
    }
}

/// A pair of adjacent symbols whose concatenation is a vocabulary entry.
struct ScoredBigram {
    var score: Float
    var left: Int
    var right: Int
    var size: Int

    /// Higher score first, then the leftmost.
    func precedes(_ o: ScoredBigram) -> Bool { score != o.score ? score > o.score : left < o.left }
}

extension Tokenizer {
    /// Builds a SentencePiece-style tokenizer (GGUF `tokenizer.ggml.model` = `llama`).
    public init(sentencePieceTokens tokens: [String], tokenTypes: [Int], scores: [Float], bosID: Int?, eosID: Int?,
                chatTemplate: String? = nil, addBOS: Bool = true, addSpacePrefix: Bool = true) throws(TokenizerError) {
        guard tokenTypes.count == tokens.count, scores.count == tokens.count else {
            throw .missingMetadata("tokenizer.ggml.token_type or tokenizer.ggml.scores")
        }
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where vocab[t] == nil { vocab[t] = i }
        var pieceIDs: [[UInt8]: Int] = [:]
        pieceIDs.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where pieceIDs[Array(t.utf8)] == nil { pieceIDs[Array(t.utf8)] = i }
        var special = [Bool](repeating: false, count: tokens.count)
        var controls: [(String, Int)] = []
        var userDefined: [(String, Int)] = []
        for i in 0..<tokens.count {
            if tokenTypes[i] == 3 {
                special[i] = true
                if !tokens[i].isEmpty { controls.append((tokens[i], i)) }
            } else if tokenTypes[i] == 4 {
                userDefined.append((tokens[i], i))
            }
        }
        controls.sort { $0.0.utf8.count > $1.0.utf8.count }
        var byteTokens = [Int](repeating: -1, count: 256)
        for b in 0..<256 {
            let hex = String(b, radix: 16, uppercase: true)
            guard let id = pieceIDs[Array(("<0x" + (hex.count == 1 ? "0" + hex : hex) + ">").utf8)] else {
                throw .missingMetadata("byte token <0x\(hex)> of a SentencePiece vocabulary")
            }
            byteTokens[b] = id
        }
        self.init(kind: .sentencePiece, tokens: tokens, tokenTypes: tokenTypes, bosID: bosID, eosID: eosID,
                  preName: "default", preTokenizer: PreTokenizer(splitDigits: false), specialTokens: controls,
                  chatTemplate: chatTemplate, addBOS: addBOS, vocab: vocab, mergeRanks: [:], isSpecial: special,
                  specialMatcher: SpecialTokenMatcher(controls), scores: scores, pieceIDs: pieceIDs,
                  userDefined: UserDefinedTokens(userDefined), byteTokens: byteTokens, addSpacePrefix: addSpacePrefix)
    }

    /// Tokenizes ordinary text (no control tokens) the SentencePiece way: user-defined tokens
    /// cut out first, then each remaining fragment merged by score.
    func sentencePiece(_ bytes: [UInt8], into out: inout [Int]) {
        var previousWasToken = true
        for fragment in userDefined.partition(bytes) {
            switch fragment {
            case .token(let id):
                out.append(id)
                previousWasToken = true
            case .text(let range):
                var text: [UInt8] = []
                text.reserveCapacity(range.count + 3)
                if addSpacePrefix && previousWasToken { text += [0xE2, 0x96, 0x81] }
                for b in bytes[range] {
                    if b == 0x20 { text += [0xE2, 0x96, 0x81] } else { text.append(b) } // " " -> U+2581
                }
                mergeByScore(text, into: &out)
                previousWasToken = false
            }
        }
    }

    /// Merges the characters of `text` pairwise, always joining the adjacent pair whose
    /// concatenation is the highest-scoring vocabulary entry (leftmost on ties), until no
    /// pair is an entry; characters left without an entry become byte tokens.
    func mergeByScore(_ text: [UInt8], into out: inout [Int]) {
        guard !text.isEmpty else { return }
        // Symbols: UTF-8 characters as (start, length), in a linked list.
        var start: [Int] = [], length: [Int] = []
        var i = 0
        while i < text.count {
            let b = text[i]
            let n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4
            let m = min(n, text.count - i)
            start.append(i); length.append(m)
            i += m
        }
        let count = start.count
        var next = Array(1...count), prev = Array(-1..<(count - 1))
        next[count - 1] = -1
        var heap = BinaryHeap<ScoredBigram> { $0.precedes($1) }
        func consider(_ l: Int, _ r: Int) {
            guard l >= 0, r >= 0 else { return }
            let size = length[l] + length[r]
            guard let id = pieceIDs[Array(text[start[l]..<(start[l] + size)])] else { return }
            heap.push(ScoredBigram(score: scores[id], left: l, right: r, size: size))
        }
        for k in 1..<count { consider(k - 1, k) }
        while let bigram = heap.pop() {
            let l = bigram.left, r = bigram.right
            guard length[l] > 0, length[r] > 0, length[l] + length[r] == bigram.size else { continue }
            length[l] += length[r]
            length[r] = 0
            next[l] = next[r]
            if next[r] >= 0 { prev[next[r]] = l }
            consider(prev[l], l)
            consider(l, next[l])
        }
        var k = 0
        while k != -1 {
            let piece = text[start[k]..<(start[k] + length[k])]
            if let id = pieceIDs[Array(piece)] {
                out.append(id)
            } else {
                for b in piece { out.append(byteTokens[Int(b)]) }
            }
            k = next[k]
        }
    }

    /// The bytes of a SentencePiece token: a byte token's byte, else its text with U+2581
    /// read as a space.
    func sentencePieceBytes(of id: Int) -> [UInt8] {
        if tokenTypes[id] == 6, let b = byteTokens.firstIndex(of: id) { return [UInt8(b)] }
        var out: [UInt8] = []
        let utf8 = Array(tokens[id].utf8)
        var i = 0
        while i < utf8.count {
            if i + 2 < utf8.count, utf8[i] == 0xE2, utf8[i + 1] == 0x96, utf8[i + 2] == 0x81 {
                out.append(0x20)
                i += 3
            } else {
                out.append(utf8[i])
                i += 1
            }
        }
        return out
    }
}

/// A binary heap ordered by `precedes` (the element that precedes all others on top).
struct BinaryHeap<Element> {
    private var items: [Element] = []
    private let precedes: (Element, Element) -> Bool

    init(precedes: @escaping (Element, Element) -> Bool) { self.precedes = precedes }

    mutating func push(_ e: Element) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard precedes(items[i], items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Element? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var best = i
                if l < items.count, precedes(items[l], items[best]) { best = l }
                if r < items.count, precedes(items[r], items[best]) { best = r }
                if best == i { break }
                items.swapAt(i, best)
                i = best
            }
        }
        return top
    }
}
