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

/// How a model family turns chat messages into prompt text, and which tokens end a turn.
public protocol ChatTemplate: Sendable {
    /// A short name (`chatml`, ...).
    var name: String { get }
    /// Token texts that end the assistant's turn (generation stops at them).
    var stopTokens: [String] { get }
    /// Renders `messages` as prompt text, ending with the assistant's header when
    /// `addGenerationPrompt` is true.
    func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) -> String
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

    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        var out = ""
        if let first = messages.first, first.role != .system, let sys = defaultSystemPrompt {
            out += "<|im_start|>system\n\(sys)<|im_end|>\n"
        }
        for m in messages {
            out += "<|im_start|>\(m.role.rawValue)\n\(m.content)<|im_end|>\n"
        }
        if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        return out
    }
}

extension ChatTemplate {
    /// A single user turn (after `system`, or the template's default system prompt), ready
    /// for generation.
    public func prompt(user: String, system: String? = nil) -> String {
        var messages: [ChatMessage] = []
        if let system { messages.append(ChatMessage(role: .system, content: system)) }
        messages.append(ChatMessage(role: .user, content: user))
        return render(messages, addGenerationPrompt: true)
    }
}
