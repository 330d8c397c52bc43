import KVTCGGUF
import KVTCTokenizers

/// Errors loading or running a model.
public enum ModelError: Error, Equatable, CustomStringConvertible {
    /// The GGUF file is unreadable or malformed.
    case gguf(GGUFError)
    /// The tokenizer metadata is unusable.
    case tokenizer(TokenizerError)
    /// The file describes an architecture no registered family implements.
    case unsupportedArchitecture(String, supported: [String])
    /// A hyperparameter is missing or inconsistent.
    case badConfig(String)
    /// A weight tensor has an unexpected shape.
    case badWeight(name: String, expected: [Int], actual: [Int])
    /// A cache passed to the model has another geometry or RoPE than the model.
    case cacheMismatch(String)
    /// A token id outside the vocabulary.
    case invalidToken(Int)
    /// An operation that needs tokens got none.
    case emptyInput(String)
    /// A sequence longer than the model's context.
    case contextOverflow(positions: Int, limit: Int)
    /// The machine cannot run the model at the precision asked for (e.g. bfloat16 without
    /// a bfloat16 matmul).
    case unsupportedPrecision(String)
    /// The matrix library failed (oneDNN returned an error).
    case backend(String)

    public var description: String {
        switch self {
        case .gguf(let e): return e.description
        case .tokenizer(let e): return e.description
        case .unsupportedArchitecture(let a, let supported):
            return "unsupported model architecture \"\(a)\" (supported: \(supported.joined(separator: ", ")))"
        case .badConfig(let m): return "bad model configuration: \(m)"
        case .badWeight(let n, let e, let a): return "weight \(n) has shape \(a), expected \(e)"
        case .cacheMismatch(let m): return "KV cache does not fit the model: \(m)"
        case .invalidToken(let t): return "token id \(t) is outside the vocabulary"
        case .emptyInput(let m): return "no tokens: \(m)"
        case .contextOverflow(let p, let l): return "position \(p) exceeds the model's context of \(l) tokens"
        case .unsupportedPrecision(let m): return "unsupported precision: \(m)"
        case .backend(let m): return "matrix library error: \(m)"
        }
    }
}
