import Foundation
import KVTCModels
import KVTCRuntime
import KVTCTokenizers

/// `POST /v1/chat/completions` request (the supported subset of OpenAI's).
public struct ChatCompletionRequest: Codable, Sendable {
    public var model: String?
    public var messages: [ChatMessage]
    public var maxTokens: Int?
    public var maxCompletionTokens: Int?
    public var temperature: Double?
    public var topP: Double?
    public var seed: UInt64?
    public var stream: Bool?
    public var streamOptions: StreamOptions?
    public var n: Int?
    /// Narrows cache sharing within the tenant to requests with the same salt (vLLM's name).
    public var cacheSalt: String?

    enum CodingKeys: String, CodingKey {
        case model, messages, temperature, seed, stream, n
        case maxTokens = "max_tokens"
        case maxCompletionTokens = "max_completion_tokens"
        case topP = "top_p"
        case streamOptions = "stream_options"
        case cacheSalt = "cache_salt"
    }
}

/// `stream_options`.
public struct StreamOptions: Codable, Sendable {
    public var includeUsage: Bool?
    enum CodingKeys: String, CodingKey { case includeUsage = "include_usage" }
}

/// A prompt given as text, as token ids, or as a one-element array of either.
public enum PromptInput: Codable, Sendable, Equatable {
    case text(String)
    case tokens([Int])

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) { self = .text(s); return }
        if let t = try? c.decode([Int].self) { self = .tokens(t); return }
        if let a = try? c.decode([String].self), a.count == 1 { self = .text(a[0]); return }
        if let a = try? c.decode([[Int]].self), a.count == 1 { self = .tokens(a[0]); return }
        throw DecodingError.dataCorruptedError(in: c, debugDescription: "prompt must be a string, a token array, or a one-element array of either")
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .text(let s): try c.encode(s)
        case .tokens(let t): try c.encode(t)
        }
    }
}

/// `POST /v1/completions` request.
public struct CompletionRequest: Codable, Sendable {
    public var model: String?
    public var prompt: PromptInput
    public var maxTokens: Int?
    public var temperature: Double?
    public var topP: Double?
    public var seed: UInt64?
    public var stream: Bool?
    public var streamOptions: StreamOptions?
    public var n: Int?
    /// Narrows cache sharing within the tenant to requests with the same salt.
    public var cacheSalt: String?

    enum CodingKeys: String, CodingKey {
        case model, prompt, temperature, seed, stream, n
        case maxTokens = "max_tokens"
        case topP = "top_p"
        case streamOptions = "stream_options"
        case cacheSalt = "cache_salt"
    }
}

/// `usage.prompt_tokens_details`.
public struct PromptTokensDetails: Codable, Sendable, Equatable {
    public var cachedTokens: Int
    enum CodingKeys: String, CodingKey { case cachedTokens = "cached_tokens" }
}

/// `usage`, as OpenAI reports it.
public struct Usage: Codable, Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    public var totalTokens: Int
    public var promptTokensDetails: PromptTokensDetails

    enum CodingKeys: String, CodingKey {
        case promptTokens = "prompt_tokens"
        case completionTokens = "completion_tokens"
        case totalTokens = "total_tokens"
        case promptTokensDetails = "prompt_tokens_details"
    }

    init(_ o: GenerationOutcome) {
        promptTokens = o.promptTokens
        completionTokens = o.tokens.count
        totalTokens = o.promptTokens + o.tokens.count
        promptTokensDetails = PromptTokensDetails(cachedTokens: o.cachedTokens)
    }
}

/// Server timings added to responses under `kvtc` (not part of OpenAI's schema).
public struct Timings: Codable, Sendable, Equatable {
    public var timeToFirstTokenSeconds: Double
    public var restoreSeconds: Double
    public var prefillSeconds: Double
    public var prefilledTokens: Int
    public var decodeSeconds: Double
    public var storeSeconds: Double

    enum CodingKeys: String, CodingKey {
        case timeToFirstTokenSeconds = "time_to_first_token_seconds"
        case restoreSeconds = "restore_seconds"
        case prefillSeconds = "prefill_seconds"
        case prefilledTokens = "prefilled_tokens"
        case decodeSeconds = "decode_seconds"
        case storeSeconds = "store_seconds"
    }

    init(_ o: GenerationOutcome) {
        timeToFirstTokenSeconds = o.timeToFirstTokenSeconds
        restoreSeconds = o.restoreSeconds
        prefillSeconds = o.prefillSeconds
        prefilledTokens = o.prefilledTokens
        decodeSeconds = o.decodeSeconds
        storeSeconds = o.storeSeconds
    }
}

/// A chat completion (or a streamed chunk of one when `object` is `chat.completion.chunk`).
public struct ChatCompletionResponse: Codable, Sendable {
    public struct Choice: Codable, Sendable {
        public var index: Int
        public var message: ChatMessage?
        public var delta: Delta?
        public var finishReason: FinishReason?
        enum CodingKeys: String, CodingKey {
            case index, message, delta
            case finishReason = "finish_reason"
        }
    }

    public struct Delta: Codable, Sendable {
        public var role: ChatRole?
        public var content: String?
    }

    public var id: String
    public var object: String
    public var created: Int
    public var model: String
    public var choices: [Choice]
    public var usage: Usage?
    public var kvtc: Timings?
}

/// A text completion (or a streamed chunk of one).
public struct CompletionResponse: Codable, Sendable {
    public struct Choice: Codable, Sendable {
        public var index: Int
        public var text: String
        public var finishReason: FinishReason?
        enum CodingKeys: String, CodingKey {
            case index, text
            case finishReason = "finish_reason"
        }
    }

    public var id: String
    public var object: String
    public var created: Int
    public var model: String
    public var choices: [Choice]
    public var usage: Usage?
    public var kvtc: Timings?
}

/// `POST /v1/kv/lookup` request: exactly one of `tokens`, `prompt` or `messages`.
public struct LookupRequest: Codable, Sendable {
    public var tokens: [Int]?
    public var prompt: String?
    public var messages: [ChatMessage]?
    /// The tenant whose entries to look up (an admin may name any; default: the caller's).
    public var tenant: String?
    /// The salt of the entries, if they were stored with one.
    public var cacheSalt: String?

    enum CodingKeys: String, CodingKey {
        case tokens, prompt, messages, tenant
        case cacheSalt = "cache_salt"
    }
}

/// `GET /v1/models`, as OpenAI answers it.
public struct ModelList: Codable, Sendable {
    public struct Model: Codable, Sendable {
        public var id: String
        public var object: String
        public var created: Int
        public var ownedBy: String
        enum CodingKeys: String, CodingKey {
            case id, object, created
            case ownedBy = "owned_by"
        }
    }
    public var object = "list"
    public var data: [Model]
}

/// `POST /v1/kv/lookup` response.
public struct LookupResponse: Codable, Sendable, Equatable {
    public var totalTokens: Int
    public var matchedTokens: Int
    public var chunkTokens: Int
    public var chunkKeys: [String]
    public var tailKey: String?

    enum CodingKeys: String, CodingKey {
        case totalTokens = "total_tokens"
        case matchedTokens = "matched_tokens"
        case chunkTokens = "chunk_tokens"
        case chunkKeys = "chunk_keys"
        case tailKey = "tail_key"
    }
}

/// The body of every error response: `{"error": {"message", "type", "code"}}`.
public struct ErrorResponse: Codable, Sendable {
    public struct Body: Codable, Sendable {
        public var message: String
        public var type: String
        public var code: String?
    }
    public var error: Body
}

/// OpenAI's `finish_reason`.
public enum FinishReason: String, Codable, Sendable, Equatable {
    /// A stop token ended the reply (or generation was cancelled).
    case stop
    /// `max_tokens` or the model's context ended it.
    case length

    /// The finish reason a generation's stop reason reports.
    public init(_ reason: StopReason) {
        switch reason {
        case .endOfSequence, .cancelled: self = .stop
        case .length, .contextFull: self = .length
        }
    }
}
