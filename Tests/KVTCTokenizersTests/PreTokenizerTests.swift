import Foundation
import Testing
@testable import KVTCTokenizers

@Suite struct PreTokenizerTests {
    func pieces(_ s: String, digits: Bool = true) -> [String] {
        PreTokenizer(splitDigits: digits).split(s).map { String($0) }
    }

    @Test func gpt2Split() {
        #expect(pieces("Hello  world's 12!\n\n") == ["Hello", " ", " world", "'s", " ", "1", "2", "!", "\n\n"])
        #expect(pieces("Hello  world's 12!\n\n", digits: false) == ["Hello", " ", " world", "'s", " 12", "!", "\n\n"])
        #expect(pieces("I'll've x") == ["I", "'ll", "'ve", " x"])
        #expect(pieces("a\nb") == ["a", "\n", "b"])
        #expect(pieces("a \n  b") == ["a", " \n ", " b"])
        #expect(pieces("  ") == ["  "])
        #expect(pieces(" ,.") == [" ,."])
        #expect(pieces("日本語 テキスト") == ["日本語", " テキスト"])
        #expect(pieces("x١٢") == ["x", "١", "٢"]) // Arabic-Indic digits are \p{N}
    }

    @Test func piecesConcatenateToInput() {
        for s in ["", "a", "e\u{301}te\u{301}", "🙂 👍🏽 family: 👨‍👩‍👧", "tabs\t\tand\r\nCRLF", "   lead", "trail   ",
                  "x'S 'x' '' ''' y", "v1.2.3-rc4 (2024-05-06)"] {
            #expect(pieces(s).joined() == s)
        }
    }
}

@Suite struct ChatTemplateTests {
    @Test func chatMLRendersTurnsAndTheDefaultSystemPrompt() {
        let t = ChatMLTemplate(defaultSystemPrompt: "S0")
        #expect(t.prompt(user: "Hi").text == "<|im_start|>system\nS0<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        let custom = t.render([ChatMessage(role: .system, content: "S"), ChatMessage(role: .user, content: "U"),
                               ChatMessage(role: .assistant, content: "A")], addGenerationPrompt: false)
        #expect(custom == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n")
        #expect(ChatMLTemplate().prompt(user: "Hi").text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        #expect(t.stopTokens.contains("<|im_end|>"))
    }

    @Test func rolesDecodeOnlyFromKnownNames() throws {
        let ok = try JSONDecoder().decode(ChatMessage.self, from: Data(#"{"role":"assistant","content":"x"}"#.utf8))
        #expect(ok.role == .assistant)
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(ChatMessage.self, from: Data(#"{"role":"robot","content":"x"}"#.utf8))
        }
    }
}
