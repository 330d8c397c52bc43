/// One message of a chat conversation.
public struct ChatMessage: Sendable, Equatable, Codable {
    /// `system`, `user` or `assistant`.
    public var role: String
    /// The message text.
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// The ChatML template SmolLM2's GGUF declares (`tokenizer.chat_template`):
///
/// ```
/// <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n
/// ```
///
/// When the first message is not a system message, the default system prompt is inserted,
/// exactly as the Jinja template in the file does.
public enum ChatTemplate {
    /// SmolLM2-Instruct's default system prompt (from the file's chat template).
    public static let defaultSystemPrompt = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

    /// Renders `messages` as ChatML text, ending with the assistant header when
    /// `addGenerationPrompt` is true.
    public static func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true,
                              defaultSystem: String? = defaultSystemPrompt) -> String {
        var out = ""
        if let first = messages.first, first.role != "system", let sys = defaultSystem {
            out += "<|im_start|>system\n\(sys)<|im_end|>\n"
        }
        for m in messages {
            out += "<|im_start|>\(m.role)\n\(m.content)<|im_end|>\n"
        }
        if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        return out
    }

    /// A single user turn with the default system prompt, ready for generation.
    public static func prompt(user: String, system: String? = nil) -> String {
        var messages: [ChatMessage] = []
        if let system { messages.append(ChatMessage(role: "system", content: system)) }
        messages.append(ChatMessage(role: "user", content: user))
        return render(messages)
    }
}
