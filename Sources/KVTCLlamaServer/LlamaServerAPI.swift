import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// Why a call to a llama-server failed.
public enum LlamaServerError: Error, Equatable, CustomStringConvertible {
    /// The server could not be reached (refused, reset, timed out).
    case unreachable(String, String)
    /// It answered with an error status.
    case status(String, Int, String)
    /// Its answer is not what its API returns.
    case malformed(String, String)

    public var description: String {
        switch self {
        case .unreachable(let u, let m): return "\(u) is unreachable: \(m)"
        case .status(let u, let s, let m): return "\(u) answered \(s): \(m)"
        case .malformed(let u, let m): return "\(u) answered something unexpected: \(m)"
        }
    }

    /// Whether the server itself is down (as opposed to refusing one request).
    public var isUnreachable: Bool { if case .unreachable = self { return true } else { return false } }
}

/// What `/props` and `/v1/models` say about the model a llama-server runs.
public struct UpstreamModel: Sendable, Equatable {
    /// Slots (`-np`).
    public var slots: Int
    /// Context of one slot, in tokens.
    public var slotContext: Int
    /// The GGUF file the server loaded.
    public var modelPath: String
    public var vocabularySize: Int
    public var trainedContext: Int
    public var embedding: Int
    public var parameters: Int
    /// Bytes of the model's tensors.
    public var tensorBytes: Int
}

/// One slot as `/slots` reports it.
public struct UpstreamSlot: Sendable, Equatable, Decodable {
    public var id: Int
    public var isProcessing: Bool
    /// Tokens the slot holds (absent for a slot that has served no task since the server started).
    public var promptTokens: Int?
    /// The slot's last task (absent before the first).
    public var task: Int?

    enum CodingKeys: String, CodingKey {
        case id
        case isProcessing = "is_processing"
        case promptTokens = "n_prompt_tokens"
        case task = "id_task"
    }
}

/// A slot save or restore as llama-server reports it.
public struct SlotActionResult: Sendable, Equatable, Decodable {
    public var saved: Int?
    public var restored: Int?
    public var bytesWritten: Int?
    public var bytesRead: Int?
    /// What llama-server timed the save or restore at.
    public var milliseconds: Double? { timings?.saveMs ?? timings?.restoreMs }
    var timings: Timings?

    struct Timings: Sendable, Equatable, Decodable {
        var saveMs: Double?
        var restoreMs: Double?
        enum CodingKeys: String, CodingKey {
            case saveMs = "save_ms"
            case restoreMs = "restore_ms"
        }
    }

    enum CodingKeys: String, CodingKey {
        case timings
        case saved = "n_saved"
        case restored = "n_restored"
        case bytesWritten = "n_written"
        case bytesRead = "n_read"
    }
}

/// One server-sent event of `/completion` with `"stream": true`.
public struct CompletionChunk: Sendable, Decodable {
    public struct Timings: Sendable, Decodable {
        public var cacheN: Int?
        public var promptN: Int?
        public var promptMs: Double?
        public var predictedN: Int?
        public var predictedMs: Double?

        enum CodingKeys: String, CodingKey {
            case cacheN = "cache_n"
            case promptN = "prompt_n"
            case promptMs = "prompt_ms"
            case predictedN = "predicted_n"
            case predictedMs = "predicted_ms"
        }
    }

    public var content: String?
    public var tokens: [Int]?
    public var stop: Bool?
    public var stopType: String?
    public var timings: Timings?
    public var tokensEvaluated: Int?
    public var tokensCached: Int?
    /// Probabilities of the top tokens after each generated token (`n_probs`).
    public var probabilities: [TokenProbabilities]?

    enum CodingKeys: String, CodingKey {
        case content, tokens, stop, timings
        case stopType = "stop_type"
        case tokensEvaluated = "tokens_evaluated"
        case tokensCached = "tokens_cached"
        case probabilities = "completion_probabilities"
    }
}

/// The most likely tokens at one generated position (`n_probs`).
public struct TokenProbabilities: Sendable, Decodable {
    public struct Candidate: Sendable, Decodable {
        public var id: Int
        public var logprob: Double?
    }
    public var id: Int
    public var logprob: Double?
    public var topLogprobs: [Candidate]?

    enum CodingKeys: String, CodingKey {
        case id, logprob
        case topLogprobs = "top_logprobs"
    }
}

/// The parameters of one `/completion` request kvtc sends.
public struct CompletionParameters: Sendable, Encodable {
    public var prompt: [Int]
    public var nPredict: Int
    public var temperature: Double
    public var topP: Double
    /// `nil` leaves llama-server's default (OpenAI's API has no top-k).
    public var topK: Int?
    public var seed: UInt32
    public var idSlot: Int
    public var cachePrompt = true
    public var stream = true
    public var returnTokens = true
    public var nProbs = 0

    public init(prompt: [Int], nPredict: Int, temperature: Double, topP: Double, topK: Int? = nil, seed: UInt32, idSlot: Int,
                cachePrompt: Bool = true, stream: Bool = true, returnTokens: Bool = true, nProbs: Int = 0) {
        self.prompt = prompt
        self.nPredict = nPredict
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.seed = seed
        self.idSlot = idSlot
        self.cachePrompt = cachePrompt
        self.stream = stream
        self.returnTokens = returnTokens
        self.nProbs = nProbs
    }

    enum CodingKeys: String, CodingKey {
        case prompt, temperature, seed, stream
        case nPredict = "n_predict"
        case topP = "top_p"
        case topK = "top_k"
        case idSlot = "id_slot"
        case cachePrompt = "cache_prompt"
        case returnTokens = "return_tokens"
        case nProbs = "n_probs"
    }
}

/// One llama-server's HTTP API, spoken with AsyncHTTPClient.
public struct LlamaServerAPI: Sendable {
    /// The server's base URL (`http://127.0.0.1:8081`).
    public let url: String
    let client: HTTPClient
    /// Seconds a non-streaming call may take.
    public var timeout: Int64

    /// Seconds for calls a live server answers in milliseconds (`/slots`, `/tokenize`,
    /// `/apply-template`).
    public static let quickSeconds: Int64 = 5

    public init(url: String, client: HTTPClient = .shared, timeout: Int64 = 120) {
        self.url = url.hasSuffix("/") ? String(url.dropLast()) : url
        self.client = client
        self.timeout = timeout
    }

    func request(_ path: String, method: HTTPMethod, json body: (any Encodable)?) throws(LlamaServerError) -> HTTPClientRequest {
        var request = HTTPClientRequest(url: url + path)
        request.method = method
        if let body {
            let data: Data
            do { data = try JSONEncoder().encode(body) } catch { throw .malformed(url, "cannot encode the request: \(error)") }
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: data))
        }
        return request
    }

    /// Sends `request`; a request that got no response at all is sent once more on a new
    /// connection, since a pooled keep-alive connection to a server that restarted fails on
    /// first use (the server never saw the request).
    func execute(_ request: HTTPClientRequest, timeout: Int64) async throws(LlamaServerError) -> HTTPClientResponse {
        do { return try await client.execute(request, timeout: .seconds(timeout)) } catch let first {
            guard Self.isStaleConnection(first) else { throw .unreachable(url, String(describing: first)) }
            do { return try await client.execute(request, timeout: .seconds(timeout)) } catch {
                throw .unreachable(url, String(describing: error))
            }
        }
    }

    /// Whether `error` is a pooled connection found closed (as opposed to a refusal or a time-out).
    static func isStaleConnection(_ error: any Error) -> Bool {
        if let e = error as? ChannelError, e == .ioOnClosedChannel || e == .alreadyClosed || e == .eof { return true }
        if let e = error as? HTTPClientError, e == .remoteConnectionClosed { return true }
        if let e = error as? IOError, e.errnoCode == ECONNRESET || e.errnoCode == EPIPE { return true }
        return false
    }

    /// Sends a request and returns the body of a 2xx answer.
    /// A dead server is seen only at the deadline (the client retries refused connections
    /// until then), so quick calls get a short one: `quick` seconds.
    func call(_ path: String, method: HTTPMethod = .GET, json body: (any Encodable)? = nil,
              limit: Int = 64 << 20, quick: Int64? = nil) async throws(LlamaServerError) -> Data {
        let request = try request(path, method: method, json: body)
        let response = try await execute(request, timeout: quick.map { min($0, timeout) } ?? timeout)
        let bytes: ByteBuffer
        do { bytes = try await response.body.collect(upTo: limit) } catch {
            throw .unreachable(url, String(describing: error))
        }
        let data = Data(bytes.readableBytesView)
        guard (200..<300).contains(Int(response.status.code)) else {
            throw .status(url, Int(response.status.code), Self.errorMessage(data))
        }
        return data
    }

    static func errorMessage(_ data: Data) -> String {
        struct E: Decodable { struct Inner: Decodable { var message: String? }; var error: Inner? }
        if let e = try? JSONDecoder().decode(E.self, from: data), let m = e.error?.message { return m }
        return String(decoding: data.prefix(300), as: UTF8.self)
    }

    func decode<T: Decodable>(_ type: T.Type, _ data: Data, _ what: String) throws(LlamaServerError) -> T {
        do { return try JSONDecoder().decode(type, from: data) } catch { throw .malformed(url, "\(what): \(error)") }
    }

    /// The model and slots the server runs (`/props` and `/v1/models`).
    public func model() async throws(LlamaServerError) -> UpstreamModel {
        struct Props: Decodable {
            struct Settings: Decodable { var n_ctx: Int }
            var default_generation_settings: Settings
            var total_slots: Int
            var model_path: String
        }
        struct Models: Decodable {
            struct Entry: Decodable {
                struct Meta: Decodable { var n_vocab: Int; var n_ctx_train: Int; var n_embd: Int; var n_params: Int; var size: Int }
                var meta: Meta?
            }
            var data: [Entry]
        }
        let props = try decode(Props.self, try await call("/props"), "/props")
        let models = try decode(Models.self, try await call("/v1/models"), "/v1/models")
        guard let meta = models.data.first?.meta else { throw .malformed(url, "/v1/models has no model metadata") }
        return UpstreamModel(slots: props.total_slots, slotContext: props.default_generation_settings.n_ctx,
                             modelPath: props.model_path, vocabularySize: meta.n_vocab, trainedContext: meta.n_ctx_train,
                             embedding: meta.n_embd, parameters: meta.n_params, tensorBytes: meta.size)
    }

    /// Every slot's state.
    public func slots() async throws(LlamaServerError) -> [UpstreamSlot] {
        try decode([UpstreamSlot].self, try await call("/slots", quick: Self.quickSeconds), "/slots")
    }

    /// The chat rendered with the model's template, as the server renders it for
    /// `/v1/chat/completions`.
    public func applyTemplate(_ messages: [[String: String]]) async throws(LlamaServerError) -> String {
        struct Body: Encodable { var messages: [[String: String]] }
        struct Answer: Decodable { var prompt: String }
        return try decode(Answer.self, try await call("/apply-template", method: .POST, json: Body(messages: messages), quick: Self.quickSeconds),
                          "/apply-template").prompt
    }

    /// `text` tokenized as the server tokenizes a prompt (special tokens added and parsed).
    public func tokenize(_ text: String) async throws(LlamaServerError) -> [Int] {
        struct Body: Encodable { var content: String; var add_special = true; var parse_special = true }
        struct Answer: Decodable { var tokens: [Int] }
        return try decode(Answer.self, try await call("/tokenize", method: .POST, json: Body(content: text), quick: Self.quickSeconds),
                          "/tokenize").tokens
    }

    /// Saves, restores or erases slot `id` (`filename` in the server's `--slot-save-path`).
    public func slotAction(_ id: Int, _ action: SlotAction, filename: String? = nil) async throws(LlamaServerError) -> SlotActionResult {
        struct Body: Encodable { var filename: String? }
        let data = try await call("/slots/\(id)?action=\(action.rawValue)", method: .POST, json: Body(filename: filename))
        return try decode(SlotActionResult.self, data, "/slots/\(id)?action=\(action.rawValue)")
    }

    /// Streams `/completion`: each event's JSON as it arrives. Ending the iteration early
    /// closes the connection, which llama-server takes as a cancellation.
    public func completion(_ parameters: CompletionParameters) async throws(LlamaServerError) -> AsyncThrowingStream<CompletionChunk, any Error> {
        let request = try request("/completion", method: .POST, json: parameters)
        let response = try await execute(request, timeout: timeout)
        guard response.status == .ok else {
            let data = (try? await response.body.collect(upTo: 1 << 20)).map { Data($0.readableBytesView) } ?? Data()
            throw .status(url, Int(response.status.code), Self.errorMessage(data))
        }
        let url = self.url
        return AsyncThrowingStream { continuation in
            let task = Task {
                var lines = ServerSentEvents()
                do {
                    for try await buffer in response.body {
                        for payload in lines.feed(buffer.readableBytesView) {
                            do { continuation.yield(try JSONDecoder().decode(CompletionChunk.self, from: payload)) } catch {
                                throw LlamaServerError.malformed(url, "a /completion event: \(error)")
                            }
                        }
                    }
                    continuation.finish()
                } catch let error as LlamaServerError {
                    continuation.finish(throwing: error)
                } catch {
                    continuation.finish(throwing: LlamaServerError.unreachable(url, "the stream broke: \(error)"))
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}

/// What `/slots/{id}` does.
public enum SlotAction: String, Sendable {
    case save, restore, erase
}

/// Splits a server-sent event stream into the payloads of its `data:` lines.
struct ServerSentEvents {
    private var pending: [UInt8] = []

    /// The payloads completed by `bytes`.
    mutating func feed<C: Collection>(_ bytes: C) -> [Data] where C.Element == UInt8 {
        pending.append(contentsOf: bytes)
        var out: [Data] = []
        while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
            var line = pending[..<newline]
            pending.removeSubrange(...newline)
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            let prefix = Array("data: ".utf8)
            guard line.starts(with: prefix) else { continue }
            let payload = line.dropFirst(prefix.count)
            if payload.elementsEqual("[DONE]".utf8) { continue }
            out.append(Data(payload))
        }
        return out
    }
}
