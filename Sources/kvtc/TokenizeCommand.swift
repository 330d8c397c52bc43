import ArgumentParser
import Foundation
import KVTCModels

/// `kvtc tokenize`: show how the model's tokenizer splits text.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Tokenize text with the model's tokenizer (control tokens such as <|im_start|> are recognised).")

    @OptionGroup var modelOptions: ModelCommandOptions

    @Argument(help: "Text to tokenize (omit with --file).")
    var text: String?

    @Option(name: .long, help: "Read the text from a file.")
    var file: String?

    @Flag(name: .long, help: "Print only the ids, space-separated.")
    var idsOnly = false

    @Flag(name: .long, help: "Treat control-token strings as ordinary text.")
    var noSpecial = false

    @Flag(name: .long, help: "Prepend the BOS token.")
    var bos = false

    func validate() throws {
        guard (text == nil) != (file == nil) else { throw ValidationError("give either TEXT or --file") }
    }

    func run() throws {
        let t = try modelOptions.loadTokenizer()
        let input = try text ?? String(contentsOfFile: file!, encoding: .utf8)
        let ids = t.encode(input, addBOS: bos, parseSpecial: !noSpecial)
        if idsOnly {
            print(ids.map(String.init).joined(separator: " "))
            return
        }
        for id in ids {
            let bytes = t.bytes(of: id) ?? []
            guard let piece = String(validating: bytes, as: UTF8.self) else {
                // Part of a multi-byte character: show the bytes.
                print("\(id)\t\(t.tokens[id])\t<\(bytes.map { String(format: "%02X", $0) }.joined(separator: " "))>")
                continue
            }
            let shown = piece.unicodeScalars.map { s -> String in
                switch s {
                case "\n": return "\\n"
                case "\t": return "\\t"
                case "\r": return "\\r"
                default: return s.value < 0x20 ? String(format: "\\x%02x", s.value) : String(s)
                }
            }.joined()
            print("\(id)\t\(t.tokens[id])\t\"\(shown)\"")
        }
        modelCommandLog("\(ids.count) tokens")
    }
}
