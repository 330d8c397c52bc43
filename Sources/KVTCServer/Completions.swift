import Foundation
import Hummingbird
import KVTCModels
import KVTCRuntime
import KVTCTokenizers
import KVTCStore

/// Serves `/v1/chat/completions` and `/v1/completions`, streaming or not.
enum Completions {
    struct Parameters {
        var maxTokens: Int
        var sampling: SamplingOptions
        var stream: Bool
        var includeUsage: Bool
    }

    static func parameters(maxTokens: Int?, temperature: Double?, topP: Double?, seed: UInt64?, n: Int?,
                           stream: Bool?, streamOptions: StreamOptions?, service: KVTCService) throws -> Parameters {
        if let n, n != 1 { throw APIError(.badRequest, "only n = 1 is supported") }
        let maxTokens = maxTokens ?? service.defaultMaxTokens
        guard maxTokens >= 1, maxTokens <= service.maxTokensLimit else {
            throw APIError(.badRequest, "max_tokens must be between 1 and \(service.maxTokensLimit)")
        }
        let temperature = temperature ?? 0
        guard temperature.isFinite, temperature >= 0, temperature <= 2 else {
            throw APIError(.badRequest, "temperature must be between 0 and 2")
        }
        let topP = topP ?? 1
        guard topP.isFinite, topP > 0, topP <= 1 else { throw APIError(.badRequest, "top_p must be in (0, 1]") }
        let sampling = SamplingOptions(temperature: Float(temperature), topK: 0, topP: Float(topP),
                                       seed: seed ?? UInt64.random(in: 0...UInt64.max))
        return Parameters(maxTokens: maxTokens, sampling: sampling, stream: stream ?? false,
                          includeUsage: streamOptions?.includeUsage ?? false)
    }

    static func identifier(_ prefix: String) -> String {
        prefix + String(UInt64.random(in: 0...UInt64.max), radix: 36)
    }

    static func chat(_ body: ChatCompletionRequest, service: KVTCService) async throws -> Response {
        guard !body.messages.isEmpty else { throw APIError(.badRequest, "'messages' must not be empty") }
        let p = try parameters(maxTokens: body.maxCompletionTokens ?? body.maxTokens, temperature: body.temperature,
                               topP: body.topP, seed: body.seed, n: body.n, stream: body.stream,
                               streamOptions: body.streamOptions, service: service)
        let tokens = service.engine.model.tokenizer.encode(service.engine.model.chatTemplate.render(body.messages, addGenerationPrompt: true))
        let request = GenerationRequest(promptTokens: tokens, maxTokens: p.maxTokens, sampling: p.sampling)
        let id = identifier("chatcmpl-"), created = Int(Date().timeIntervalSince1970), model = service.modelName
        if !p.stream {
            let o = try await run(request, service: service)
            let response = ChatCompletionResponse(
                id: id, object: "chat.completion", created: created, model: model,
                choices: [.init(index: 0, message: ChatMessage(role: .assistant, content: o.text), delta: nil, finishReason: FinishReason(o.stopReason))],
                usage: Usage(o), kvtc: Timings(o))
            return JSONBody.response(response)
        }
        @Sendable func chunk(_ delta: ChatCompletionResponse.Delta?, finish: FinishReason? = nil, usage: Usage? = nil, timings: Timings? = nil) -> ChatCompletionResponse {
            ChatCompletionResponse(id: id, object: "chat.completion.chunk", created: created, model: model,
                                   choices: delta == nil && finish == nil ? [] : [.init(index: 0, message: nil, delta: delta ?? .init(), finishReason: finish)],
                                   usage: usage, kvtc: timings)
        }
        return try stream(request, service: service,
                      first: chunk(.init(role: .assistant, content: "")),
                      piece: { chunk(.init(role: nil, content: $0)) },
                      last: { o in
                          var events = [chunk(.init(), finish: FinishReason(o.stopReason), timings: Timings(o))]
                          if p.includeUsage { events.append(chunk(nil, usage: Usage(o))) }
                          return events
                      })
    }

    static func text(_ body: CompletionRequest, service: KVTCService) async throws -> Response {
        let p = try parameters(maxTokens: body.maxTokens, temperature: body.temperature, topP: body.topP, seed: body.seed,
                               n: body.n, stream: body.stream, streamOptions: body.streamOptions, service: service)
        let tokenizer = service.engine.model.tokenizer
        let tokens: [Int]
        switch body.prompt {
        case .text(let s): tokens = tokenizer.encode(s, addBOS: tokenizer.addBOS)
        case .tokens(let t): tokens = t
        }
        let request = GenerationRequest(promptTokens: tokens, maxTokens: p.maxTokens, sampling: p.sampling)
        let id = identifier("cmpl-"), created = Int(Date().timeIntervalSince1970), model = service.modelName
        if !p.stream {
            let o = try await run(request, service: service)
            return JSONBody.response(CompletionResponse(
                id: id, object: "text_completion", created: created, model: model,
                choices: [.init(index: 0, text: o.text, finishReason: FinishReason(o.stopReason))], usage: Usage(o), kvtc: Timings(o)))
        }
        @Sendable func chunk(_ text: String?, finish: FinishReason? = nil, usage: Usage? = nil, timings: Timings? = nil) -> CompletionResponse {
            CompletionResponse(id: id, object: "text_completion", created: created, model: model,
                               choices: text == nil ? [] : [.init(index: 0, text: text!, finishReason: finish)],
                               usage: usage, kvtc: timings)
        }
        return try stream(request, service: service, first: nil, piece: { chunk($0) }, last: { o in
            var events = [chunk("", finish: FinishReason(o.stopReason), timings: Timings(o))]
            if p.includeUsage { events.append(chunk(nil, usage: Usage(o))) }
            return events
        })
    }

    /// Runs a request to completion, mapping engine errors to HTTP errors.
    static func run(_ request: GenerationRequest, service: KVTCService) async throws -> GenerationOutcome {
        do { return try await service.engine.generate(request) } catch {
            switch error {
            case .invalidRequest(let m): throw APIError(.badRequest, m)
            case .model(let e): throw APIError(.internalServerError, e.description)
            }
        }
    }

    /// One server-sent event carrying `event` as JSON.
    static func sse<E: Encodable>(_ event: E) -> ByteBuffer {
        var data = Data("data: ".utf8)
        data.append(JSONBody.data(event))
        data.append(contentsOf: Array("\n\n".utf8))
        return ByteBuffer(bytes: data)
    }

    /// A server-sent event stream: `first` (if any), one event per piece of text, then
    /// `last`, then `data: [DONE]`. Request errors found before generation still answer 4xx.
    static func stream<Event: Encodable & Sendable>(_ request: GenerationRequest, service: KVTCService, first: Event?,
                                                    piece: @escaping @Sendable (String) -> Event,
                                                    last: @escaping @Sendable (GenerationOutcome) -> [Event]) throws -> Response {
        do { try service.engine.validate(request) } catch { throw APIError(.badRequest, error.description) }
        let (events, continuation) = AsyncStream<ByteBuffer>.makeStream()
        if let first { continuation.yield(sse(first)) }
        Task {
            do {
                let outcome = try await service.engine.generate(request) { _, text in
                    if !text.isEmpty { continuation.yield(sse(piece(text))) }
                    return true
                }
                for e in last(outcome) { continuation.yield(sse(e)) }
            } catch {
                continuation.yield(sse(ErrorResponse(error: .init(message: "\(error)", type: "invalid_request_error", code: "400"))))
            }
            continuation.yield(ByteBuffer(string: "data: [DONE]\n\n"))
            continuation.finish()
        }
        return Response(status: .ok,
                        headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                        body: ResponseBody(asyncSequence: events))
    }
}
