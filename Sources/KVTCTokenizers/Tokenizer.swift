import Foundation
import KVTCGGUF

/// Errors building a tokenizer from GGUF metadata or using it.
public enum TokenizerError: Error, Equatable, CustomStringConvertible {
    /// A required metadata key is absent or has the wrong type.
    case missingMetadata(String)
    /// `tokenizer.ggml.model` is not a byte-level BPE ("gpt2").
    case unsupportedModel(String)
    /// A merge rule is not two space-separated symbols.
    case badMerge(index: Int)
    /// A token id outside the vocabulary.
    case unknownToken(Int)

    public var description: String {
        switch self {
        case .missingMetadata(let k): return "tokenizer metadata \(k) is missing or malformed"
        case .unsupportedModel(let m): return "tokenizer model \"\(m)\" is not supported (gpt2 byte-level BPE and llama SentencePiece are)"
        case .badMerge(let i): return "tokenizer merge rule \(i) is malformed"
        case .unknownToken(let t): return "token id \(t) is outside the vocabulary"
        }
    }
}

/// A tokenizer built from GGUF metadata: GPT-2 byte-level BPE (`tokenizer.ggml.model` =
/// `gpt2`) or SentencePiece-style merging by score (`llama`, as Gemma's files declare).
///
/// BPE: text is split into pieces by ``PreTokenizer``; each piece's UTF-8 bytes are mapped to
/// printable characters (GPT-2's byte-to-unicode table) and merged by rank. SentencePiece:
/// spaces become U+2581, characters merge pairwise into the highest-scoring vocabulary
/// entry, and characters no entry covers fall back to byte tokens (`<0x41>`); user-defined
/// tokens (type 4, such as Gemma's newline and space runs) are cut out of the text first,
/// longest first, as llama.cpp does. Control tokens (type 3, such as `<|im_start|>` or
/// `<start_of_turn>`) are recognised as whole strings in the text.
public struct Tokenizer: Sendable {
    /// How ordinary text becomes tokens.
    public enum Kind: String, Sendable {
        /// GPT-2 byte-level BPE with ranked merges.
        case bytePairs
        /// SentencePiece-style merging by token score with byte fallback.
        case sentencePiece
    }

    /// The tokenization algorithm.
    public let kind: Kind
    /// Token strings by id (byte-level form for ordinary tokens).
    public let tokens: [String]
    /// GGUF token types by id (1 normal, 3 control, ...).
    public let tokenTypes: [Int]
    /// Beginning-of-sequence token id.
    public let bosID: Int?
    /// End-of-sequence token id.
    public let eosID: Int?
    /// Pre-tokenizer name (`tokenizer.ggml.pre`).
    public let preName: String
    /// The pre-tokenizer in use.
    public let preTokenizer: PreTokenizer
    /// Control tokens, longest first: (text, id).
    public let specialTokens: [(String, Int)]
    /// The chat template (`tokenizer.chat_template`), if the file has one.
    public let chatTemplate: String?
    /// Whether the file asks for a BOS token at the start of every encoding.
    public let addBOS: Bool

    let vocab: [String: Int]
    let mergeRanks: [String: Int]
    let isSpecial: [Bool]
    let specialMatcher: SpecialTokenMatcher
    /// SentencePiece: token scores, user-defined tokens (longest first), the byte tokens by
    /// byte value, and whether a space is put before text that starts a fragment.
    let scores: [Float]
    /// Token ids by their exact UTF-8 bytes (Swift strings compare by canonical equivalence,
    /// which would take `e` + U+0301 for `é`).
    let pieceIDs: [[UInt8]: Int]
    let userDefined: UserDefinedTokens
    let byteTokens: [Int]
    let addSpacePrefix: Bool

    /// Vocabulary size.
    public var vocabularySize: Int { tokens.count }

    /// Builds the tokenizer from a GGUF file's metadata.
    public init(gguf: GGUFFile) throws(TokenizerError) {
        let md = gguf.metadata
        let model = md["tokenizer.ggml.model"]?.stringValue ?? ""
        guard model == "gpt2" || model == "llama" else { throw .unsupportedModel(model) }
        guard let toks = md["tokenizer.ggml.tokens"]?.arrayValue else { throw .missingMetadata("tokenizer.ggml.tokens") }
        var tokens: [String] = []
        tokens.reserveCapacity(toks.count)
        for t in toks {
            guard let s = t.stringValue else { throw .missingMetadata("tokenizer.ggml.tokens") }
            tokens.append(s)
        }
        var types = [Int](repeating: 1, count: tokens.count)
        if let tt = md["tokenizer.ggml.token_type"]?.arrayValue {
            guard tt.count == tokens.count else { throw .missingMetadata("tokenizer.ggml.token_type") }
            for (i, v) in tt.enumerated() { types[i] = v.intValue ?? 1 }
        }
        let addBOS = md["tokenizer.ggml.add_bos_token"].map { $0.intValue == 1 } ?? (model == "llama")
        if model == "llama" {
            guard let sv = md["tokenizer.ggml.scores"]?.arrayValue, sv.count == tokens.count else {
                throw .missingMetadata("tokenizer.ggml.scores")
            }
            var scores = [Float](repeating: 0, count: tokens.count)
            for (i, v) in sv.enumerated() {
                guard let d = v.doubleValue else { throw .missingMetadata("tokenizer.ggml.scores") }
                scores[i] = Float(d)
            }
            try self.init(sentencePieceTokens: tokens, tokenTypes: types, scores: scores,
                          bosID: md["tokenizer.ggml.bos_token_id"]?.intValue,
                          eosID: md["tokenizer.ggml.eos_token_id"]?.intValue,
                          chatTemplate: md["tokenizer.chat_template"]?.stringValue, addBOS: addBOS,
                          addSpacePrefix: md["tokenizer.ggml.add_space_prefix"].map { $0.intValue == 1 } ?? true)
            return
        }
        guard let mergeValues = md["tokenizer.ggml.merges"]?.arrayValue else { throw .missingMetadata("tokenizer.ggml.merges") }
        var merges: [String] = []
        merges.reserveCapacity(mergeValues.count)
        for (i, m) in mergeValues.enumerated() {
            guard let s = m.stringValue else { throw .badMerge(index: i) }
            merges.append(s)
        }
        try self.init(tokens: tokens, tokenTypes: types, merges: merges,
                      bosID: md["tokenizer.ggml.bos_token_id"]?.intValue,
                      eosID: md["tokenizer.ggml.eos_token_id"]?.intValue,
                      pre: md["tokenizer.ggml.pre"]?.stringValue ?? "default",
                      chatTemplate: md["tokenizer.chat_template"]?.stringValue, addBOS: addBOS)
    }

    /// Builds a tokenizer from its parts (merges as `"left right"` strings, in rank order).
    public init(tokens: [String], tokenTypes: [Int], merges: [String], bosID: Int?, eosID: Int?,
                pre: String, chatTemplate: String? = nil, addBOS: Bool = false) throws(TokenizerError) {
        self.kind = .bytePairs
        self.tokens = tokens
        self.tokenTypes = tokenTypes
        self.bosID = bosID
        self.eosID = eosID
        self.preName = pre
        self.chatTemplate = chatTemplate
        self.addBOS = addBOS
        self.scores = []
        self.pieceIDs = [:]
        self.userDefined = UserDefinedTokens([])
        self.byteTokens = []
        self.addSpacePrefix = false
        // Pre-tokenizers that isolate single digits (llama.cpp: smollm, starcoder, refact, ...).
        let digitSplitting: Set<String> = ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"]
        self.preTokenizer = PreTokenizer(splitDigits: digitSplitting.contains(pre))
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where vocab[t] == nil { vocab[t] = i }
        self.vocab = vocab
        var ranks: [String: Int] = [:]
        ranks.reserveCapacity(merges.count)
        for (i, m) in merges.enumerated() {
            let parts = m.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { throw .badMerge(index: i) }
            if ranks[m] == nil { ranks[m] = i }
        }
        self.mergeRanks = ranks
        var special = [Bool](repeating: false, count: tokens.count)
        var specials: [(String, Int)] = []
        for i in 0..<tokens.count where i < tokenTypes.count && (tokenTypes[i] == 3 || tokenTypes[i] == 4) {
            special[i] = true
            if !tokens[i].isEmpty { specials.append((tokens[i], i)) }
        }
        specials.sort { $0.0.utf8.count > $1.0.utf8.count }
        self.specialTokens = specials
        self.isSpecial = special
        self.specialMatcher = SpecialTokenMatcher(specials)
    }

    /// Every stored property, as the public initializers compute them.
    init(kind: Kind, tokens: [String], tokenTypes: [Int], bosID: Int?, eosID: Int?, preName: String,
         preTokenizer: PreTokenizer, specialTokens: [(String, Int)], chatTemplate: String?, addBOS: Bool,
         vocab: [String: Int], mergeRanks: [String: Int], isSpecial: [Bool], specialMatcher: SpecialTokenMatcher,
         scores: [Float], pieceIDs: [[UInt8]: Int], userDefined: UserDefinedTokens, byteTokens: [Int], addSpacePrefix: Bool) {
        self.kind = kind
        self.tokens = tokens
        self.tokenTypes = tokenTypes
        self.bosID = bosID
        self.eosID = eosID
        self.preName = preName
        self.preTokenizer = preTokenizer
        self.specialTokens = specialTokens
        self.chatTemplate = chatTemplate
        self.addBOS = addBOS
        self.vocab = vocab
        self.mergeRanks = mergeRanks
        self.isSpecial = isSpecial
        self.specialMatcher = specialMatcher
        self.scores = scores
        self.pieceIDs = pieceIDs
        self.userDefined = userDefined
        self.byteTokens = byteTokens
        self.addSpacePrefix = addSpacePrefix
    }

    /// The id of a token string (byte-level form), if it is in the vocabulary.
    public func id(of token: String) -> Int? { kind == .sentencePiece ? pieceIDs[Array(token.utf8)] : vocab[token] }

    /// Whether `id` is a control token such as `<|im_end|>`.
    public func isControl(_ id: Int) -> Bool { id >= 0 && id < isSpecial.count && isSpecial[id] }

    /// Encodes `text`. Control-token strings in the text become their ids when
    /// `parseSpecial` is true; otherwise they are tokenized as ordinary text.
    /// A BOS token is prepended when `addBOS` is true.
    ///
    /// Time is linear in the length of `text` (up to the log factor of BPE's merge queue):
    /// control tokens are found in one left-to-right pass, and each pre-token is merged with
    /// a priority queue rather than by rescanning it after every merge.
    public func encode(_ text: String, addBOS: Bool = false, parseSpecial: Bool = true) -> [Int] {
        var out: [Int] = []
        if addBOS, let b = bosID { out.append(b) }
        var cache: [Substring: [Int]] = [:]
        if !parseSpecial || specialTokens.isEmpty {
            encodeOrdinary(Substring(text), into: &out, cache: &cache)
            return out
        }
        let utf8 = Array(text.utf8)
        var runStart = 0
        var i = 0
        while i < utf8.count {
            if let (length, id) = specialMatcher.match(utf8, at: i) {
                encodeOrdinary(utf8[runStart..<i], into: &out, cache: &cache)
                out.append(id)
                i += length
                runStart = i
            } else {
                i += 1
            }
        }
        encodeOrdinary(utf8[runStart..<utf8.count], into: &out, cache: &cache)
        return out
    }

    /// Encodes a rendered chat prompt: control tokens only where the template put them
    /// (``RenderedPrompt/controls``), every other byte — message contents included — as
    /// ordinary text, so a user cannot open a turn by typing `<|im_start|>`.
    public func encode(_ prompt: RenderedPrompt, addBOS: Bool = false) -> [Int] {
        var out: [Int] = []
        if addBOS, let b = bosID { out.append(b) }
        var cache: [Substring: [Int]] = [:]
        let utf8 = Array(prompt.text.utf8)
        var runStart = 0
        for control in prompt.controls {
            guard control.lowerBound >= runStart, control.upperBound <= utf8.count else { continue }
            let piece = Array(utf8[control])
            // A control range the vocabulary has no control token for is plain text.
            guard let (length, id) = specialMatcher.match(piece, at: 0), length == piece.count else { continue }
            encodeOrdinary(utf8[runStart..<control.lowerBound], into: &out, cache: &cache)
            out.append(id)
            runStart = control.upperBound
        }
        encodeOrdinary(utf8[runStart..<utf8.count], into: &out, cache: &cache)
        return out
    }

    func encodeOrdinary(_ bytes: ArraySlice<UInt8>, into out: inout [Int], cache: inout [Substring: [Int]]) {
        guard !bytes.isEmpty else { return }
        // Control tokens are ASCII-delimited, so the cut points are character boundaries.
        encodeOrdinary(Substring(String(decoding: bytes, as: UTF8.self)), into: &out, cache: &cache)
    }

    func encodeOrdinary(_ text: Substring, into out: inout [Int],
                        cache: inout [Substring: [Int]]) {
        guard !text.isEmpty else { return }
        if kind == .sentencePiece {
            sentencePiece(Array(text.utf8), into: &out)
            return
        }
        for piece in preTokenizer.split(String(text)) {
            let key = Substring(piece)
            if let c = cache[key] { out.append(contentsOf: c); continue }
            let ids = bpe(piece)
            cache[key] = ids
            out.append(contentsOf: ids)
        }
    }

    /// Byte-level BPE of one pre-token.
    ///
    /// Symbols form a linked list; candidate pairs sit in a min-heap ordered by merge rank,
    /// then position, and are checked against the list when popped (stale ones skipped).
    /// This gives the same merges as repeatedly merging the lowest-ranked pair leftmost
    /// first, in O(n log n) for a pre-token of n bytes.
    func bpe(_ piece: Substring.UnicodeScalarView) -> [Int] {
        var symbols: [String] = []
        for b in String(piece).utf8 { symbols.append(ByteLevel.encodeTable[Int(b)]) }
        if symbols.count == 1 { return lookup(symbols[0]) }
        let n = symbols.count
        var next = Array(1...n)            // next[i] == n: end
        var prev = Array(-1..<(n - 1))     // prev[i] == -1: start
        var alive = [Bool](repeating: true, count: n)
        var heap = BinaryHeap<MergeCandidate> { $0.precedes($1) }
        func consider(_ i: Int) {
            let j = next[i]
            guard j < n, let r = mergeRanks[symbols[i] + " " + symbols[j]] else { return }
            heap.push(MergeCandidate(rank: r, left: i, leftSymbol: symbols[i], rightSymbol: symbols[j]))
        }
        for i in 0..<(n - 1) { consider(i) }
        while let c = heap.pop() {
            let i = c.left
            guard alive[i], symbols[i] == c.leftSymbol else { continue }
            let j = next[i]
            guard j < n, symbols[j] == c.rightSymbol else { continue }
            symbols[i] += symbols[j]
            alive[j] = false
            next[i] = next[j]
            if next[j] < n { prev[next[j]] = i }
            if prev[i] >= 0 { consider(prev[i]) }
            consider(i)
        }
        var ids: [Int] = []
        var i = 0
        while i < n {
            ids.append(contentsOf: lookup(symbols[i]))
            i = next[i]
        }
        return ids
    }

    /// The id of a symbol, falling back to its single bytes if it is not in the vocabulary.
    func lookup(_ symbol: String) -> [Int] {
        if let id = vocab[symbol] { return [id] }
        var ids: [Int] = []
        for ch in symbol.unicodeScalars {
            if let id = vocab[String(ch)] { ids.append(id) }
        }
        return ids
    }

    /// The bytes a token stands for (control tokens give their text; `nil` for invalid ids).
    public func bytes(of id: Int) -> [UInt8]? {
        guard id >= 0, id < tokens.count else { return nil }
        if isSpecial[id] { return Array(tokens[id].utf8) }
        if kind == .sentencePiece { return sentencePieceBytes(of: id) }
        var out: [UInt8] = []
        for s in tokens[id].unicodeScalars {
            if let b = ByteLevel.decodeTable[s] { out.append(b) } else { out.append(contentsOf: String(s).utf8) }
        }
        return out
    }

    /// The UTF-8 bytes of a token sequence. Control tokens are included unless `skipControl`.
    public func decodeBytes(_ ids: [Int], skipControl: Bool = false) throws(TokenizerError) -> [UInt8] {
        var out: [UInt8] = []
        for id in ids {
            guard let b = bytes(of: id) else { throw .unknownToken(id) }
            if skipControl && isSpecial[id] { continue }
            out.append(contentsOf: b)
        }
        return out
    }

    /// Decodes token ids to text (invalid UTF-8 is repaired with U+FFFD).
    public func decode(_ ids: [Int], skipControl: Bool = false) throws(TokenizerError) -> String {
        String(decoding: try decodeBytes(ids, skipControl: skipControl), as: UTF8.self)
    }
}

/// GPT-2's reversible mapping between bytes and printable Unicode characters.
public enum ByteLevel {
    /// The character each byte maps to.
    public static let encodeTable: [String] = {
        var table = [String](repeating: "", count: 256)
        var n: UInt32 = 0
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table[b] = String(Unicode.Scalar(UInt32(b))!)
            } else {
                table[b] = String(Unicode.Scalar(256 + n)!)
                n += 1
            }
        }
        return table
    }()

    /// The byte each mapped character stands for.
    public static let decodeTable: [Unicode.Scalar: UInt8] = {
        var d: [Unicode.Scalar: UInt8] = [:]
        for (b, s) in encodeTable.enumerated() { d[s.unicodeScalars.first!] = UInt8(b) }
        return d
    }()
}

/// Turns a stream of token ids into text pieces, holding back bytes until they form
/// complete UTF-8 characters.
public struct StreamingDecoder: Sendable {
    private var pending: [UInt8] = []
    /// The tokenizer used for decoding.
    public let tokenizer: Tokenizer

    public init(tokenizer: Tokenizer) { self.tokenizer = tokenizer }

    /// Adds a token and returns the text that is now complete (possibly empty).
    public mutating func append(_ id: Int) -> String {
        guard let b = tokenizer.bytes(of: id) else { return "" }
        pending.append(contentsOf: b)
        // Find the longest prefix that ends on a complete UTF-8 sequence.
        var cut = pending.count
        var i = pending.count - 1
        var back = 0
        while i >= 0 && back < 4 {
            let c = pending[i]
            if c & 0xC0 != 0x80 {
                let need = c < 0x80 ? 1 : (c >> 5 == 0x6 ? 2 : (c >> 4 == 0xE ? 3 : (c >> 3 == 0x1E ? 4 : 1)))
                if pending.count - i < need { cut = i }
                break
            }
            i -= 1; back += 1
        }
        let text = String(decoding: pending[..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return text
    }

    /// Returns whatever bytes are still held (repairing incomplete sequences).
    public mutating func flush() -> String {
        let text = String(decoding: pending, as: UTF8.self)
        pending.removeAll()
        return text
    }
}

/// Finds control tokens at a byte position: candidates bucketed by their first byte,
/// longest first, so a scan over a text costs one bucket lookup per byte.
struct SpecialTokenMatcher: Sendable {
    private var buckets: [[([UInt8], Int)]] = Array(repeating: [], count: 256)

    init(_ specials: [(String, Int)]) {
        for (text, id) in specials {
            let bytes = Array(text.utf8)
            guard let first = bytes.first else { continue }
            buckets[Int(first)].append((bytes, id))
        }
        for b in 0..<256 { buckets[b].sort { $0.0.count > $1.0.count } }
    }

    /// The tokens that start with `byte`, longest first.
    func candidates(startingWith byte: UInt8) -> [([UInt8], Int)] { buckets[Int(byte)] }

    /// The longest control token starting at `i` in `bytes`: its length and id.
    func match<C: RandomAccessCollection>(_ bytes: C, at i: C.Index) -> (Int, Int)? where C.Element == UInt8, C.Index == Int {
        let candidates = buckets[Int(bytes[i])]
        guard !candidates.isEmpty else { return nil }
        let available = bytes.endIndex - i
        outer: for (token, id) in candidates where token.count <= available {
            for k in 1..<token.count where bytes[i + k] != token[k] { continue outer }
            return (token.count, id)
        }
        return nil
    }
}

/// A pair of adjacent symbols that a merge rule joins.
struct MergeCandidate {
    var rank: Int
    var left: Int
    var leftSymbol: String
    var rightSymbol: String

    func precedes(_ o: MergeCandidate) -> Bool { rank != o.rank ? rank < o.rank : left < o.left }
}
