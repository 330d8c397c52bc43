/// Who wrote a chat message.
public enum ChatRole: String, Sendable, Equatable, Codable, CaseIterable {
    case system, user, assistant
}

/// One message of a chat conversation.
public struct ChatMessage: Sendable, Equatable, Codable {
    /// Who wrote it.
    public var role: ChatRole
    /// The message text.
    public var content: String

    public init(role: ChatRole, content: String) {
        self.role = role
        self.content = content
    }
}

/// A chat prompt as text, with the byte ranges where the template (never a message)
/// placed control tokens. ``Tokenizer/encode(_:addBOS:)-(RenderedPrompt,_)`` turns only
/// those ranges into control tokens; everything else, message contents included, is text.
public struct RenderedPrompt: Sendable, Equatable {
    /// The prompt text.
    public private(set) var text = ""
    /// UTF-8 byte ranges of ``text`` holding control tokens, in order.
    public private(set) var controls: [Range<Int>] = []

    public init() {}

    /// Appends a control token's text (from the template).
    public mutating func control(_ token: String) {
        let start = text.utf8.count
        text += token
        controls.append(start..<text.utf8.count)
    }

    /// Appends ordinary text (a role name, a newline, a message's content).
    public mutating func text(_ s: String) { text += s }
}

/// How a model family turns chat messages into prompt text, and which tokens end a turn.
public protocol ChatTemplate: Sendable {
    /// A short name (`chatml`, ...).
    var name: String { get }
    /// Token texts that end the assistant's turn (generation stops at them).
    var stopTokens: [String] { get }
    /// Renders `messages` as a prompt, ending with the assistant's header when
    /// `addGenerationPrompt` is true; control tokens are marked as the template's own.
    func prompt(_ messages: [ChatMessage], addGenerationPrompt: Bool) -> RenderedPrompt
}

/// ChatML, the template SmolLM2's GGUF declares (`tokenizer.chat_template`):
///
/// ```
/// <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n
/// ```
///
/// When the first message is not a system message and the template has a default system
/// prompt, that prompt is inserted, exactly as the Jinja template in the file does.
public struct ChatMLTemplate: ChatTemplate, Equatable {
    /// The system prompt inserted when the conversation has none.
    public var defaultSystemPrompt: String?

    public init(defaultSystemPrompt: String? = nil) {
        self.defaultSystemPrompt = defaultSystemPrompt
    }

    /// SmolLM2-Instruct's template, with the default system prompt of its GGUF.
    public static let smolLM2 = ChatMLTemplate(
        defaultSystemPrompt: "You are a helpful AI assistant named SmolLM, trained by Hugging Face")

    public var name: String { "chatml" }

    public var stopTokens: [String] { ["<|im_end|>", "<|endoftext|>"] }

    public func prompt(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> RenderedPrompt {
        var out = RenderedPrompt()
        func turn(_ role: ChatRole, _ content: String) {
            out.control("<|im_start|>")
            out.text("\(role.rawValue)\n\(content)")
            out.control("<|im_end|>")
            out.text("\n")
        }
        if let first = messages.first, first.role != .system, let sys = defaultSystemPrompt { turn(.system, sys) }
        for m in messages { turn(m.role, m.content) }
        if addGenerationPrompt {
            out.control("<|im_start|>")
            out.text("assistant\n")
        }
        return out
    }
}

extension ChatTemplate {
    /// The prompt's text (for display; encode ``prompt(_:addGenerationPrompt:)`` instead,
    /// so that message contents stay text).
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        prompt(messages, addGenerationPrompt: addGenerationPrompt).text
    }

    /// A single user turn (after `system`, or the template's default system prompt), ready
    /// for generation.
    public func prompt(user: String, system: String? = nil) -> RenderedPrompt {
        var messages: [ChatMessage] = []
        if let system { messages.append(ChatMessage(role: .system, content: system)) }
        messages.append(ChatMessage(role: .user, content: user))
        return prompt(messages, addGenerationPrompt: true)
    }
}

/// Gemma's turn markers, as Gemma 3's GGUF template writes them:
///
/// ```
/// <start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n{answer}<end_of_turn>\n
/// ```
///
/// Gemma has no system role: a system message is prepended to the first user turn, followed
/// by a blank line. The assistant's role is called `model`; message contents are trimmed of
/// surrounding whitespace, as the template's `| trim` does. The BOS token is the tokenizer's
/// to add (`tokenizer.ggml.add_bos_token`).
public struct GemmaTemplate: ChatTemplate, Equatable {
    public init() {}

    public var name: String { "gemma" }

    public var stopTokens: [String] { ["<end_of_turn>", "<eos>"] }

    public func prompt(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> RenderedPrompt {
        var out = RenderedPrompt()
        var prefix = ""
        var rest = messages[...]
        if let first = rest.first, first.role == .system {
            prefix = first.content.trimmingWhitespace() + "\n\n"
            rest = rest.dropFirst()
        }
        for (i, m) in rest.enumerated() {
            out.control("<start_of_turn>")
            out.text((m.role == .assistant ? "model" : m.role.rawValue) + "\n" + (i == 0 ? prefix : "") + m.content.trimmingWhitespace())
            out.control("<end_of_turn>")
            out.text("\n")
        }
        if addGenerationPrompt {
            out.control("<start_of_turn>")
            out.text("model\n")
        }
        return out
    }
}

extension String {
    /// The string without leading and trailing whitespace and newlines (Jinja's `trim`).
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let start = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
              let end = scalars.lastIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        return String(scalars[start...end])
    }
}
