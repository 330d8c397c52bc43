/// The pre-tokenization of GPT-2 style byte-level BPE, written out by hand.
///
/// It reproduces the regular expression
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// over Unicode scalars, optionally after isolating every numeric scalar (`\p{N}`) as a
/// piece of its own (SmolLM2's "digits split one by one").
public struct PreTokenizer: Sendable {
    /// Whether every `\p{N}` scalar becomes its own piece before the GPT-2 split.
    public var splitDigits: Bool

    public init(splitDigits: Bool) { self.splitDigits = splitDigits }

    enum Class { case letter, number, space, other }

    @inline(__always)
    static func classify(_ s: Unicode.Scalar) -> Class {
        if s.value < 0x80 {
            let v = s.value
            if (v >= 0x41 && v <= 0x5A) || (v >= 0x61 && v <= 0x7A) { return .letter }
            if v >= 0x30 && v <= 0x39 { return .number }
            if v == 0x20 || (v >= 0x09 && v <= 0x0D) { return .space }
            return .other
        }
        if s.properties.isWhitespace { return .space }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return .letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return .number
        default:
            return .other
        }
    }

    /// Splits `text` into pieces whose concatenation is `text`.
    public func split(_ text: String) -> [Substring.UnicodeScalarView] {
        let scalars = text.unicodeScalars
        var pieces: [Substring.UnicodeScalarView] = []
        if splitDigits {
            var start = scalars.startIndex
            var i = start
            while i != scalars.endIndex {
                let next = scalars.index(after: i)
                if Self.classify(scalars[i]) == .number {
                    if start != i { gpt2(scalars[start..<i], into: &pieces) }
                    pieces.append(scalars[i..<next])
                    start = next
                }
                i = next
            }
            if start != scalars.endIndex { gpt2(scalars[start...], into: &pieces) }
        } else {
            gpt2(scalars[...], into: &pieces)
        }
        return pieces
    }

    /// The GPT-2 regular expression applied to one span.
    func gpt2(_ s: Substring.UnicodeScalarView, into pieces: inout [Substring.UnicodeScalarView]) {
        let end = s.endIndex
        var i = s.startIndex
        while i != end {
            let c = s[i]
            // 's 't 're 've 'm 'll 'd
            if c == "'" {
                let j = s.index(after: i)
                if j != end {
                    let c1 = s[j]
                    if c1 == "s" || c1 == "t" || c1 == "m" || c1 == "d" {
                        let k = s.index(after: j)
                        pieces.append(s[i..<k]); i = k; continue
                    }
                    let k = s.index(after: j)
                    if k != end {
                        let c2 = s[k]
                        if (c1 == "r" && c2 == "e") || (c1 == "v" && c2 == "e") || (c1 == "l" && c2 == "l") {
                            let e = s.index(after: k)
                            pieces.append(s[i..<e]); i = e; continue
                        }
                    }
                }
            }
            // ` ?X+` for X in letters, numbers, others.
            var j = i
            if c == " " { j = s.index(after: i) }
            if j != end {
                let cls = Self.classify(s[j])
                if cls != .space {
                    var k = s.index(after: j)
                    while k != end {
                        let ck = Self.classify(s[k])
                        if ck != cls { break }
                        k = s.index(after: k)
                    }
                    pieces.append(s[i..<k]); i = k; continue
                }
            }
            // Whitespace: `\s+(?!\S)` then `\s+`.
            if Self.classify(c) == .space {
                var k = s.index(after: i)
                var count = 1
                while k != end, Self.classify(s[k]) == .space {
                    k = s.index(after: k); count += 1
                }
                if k != end && count > 1 {
                    // Leave the last whitespace scalar to prefix the next piece.
                    k = s.index(before: k)
                }
                pieces.append(s[i..<k]); i = k; continue
            }
            // Unreachable in practice (a lone space followed by whitespace is handled above).
            let k = s.index(after: i)
            pieces.append(s[i..<k]); i = k
        }
    }
}
