import Foundation
import Hummingbird
import KVTCModels
import KVTCRuntime
import KVTCTokenizers
import KVTCStore

/// Serves `/v1/chat/completions` and `/v1/completions`, streaming or not.
///
/// Each request is checked (parameters, prompt size before tokenizing), admitted through
/// the bounded queue, and run in its tenant's namespace; it stops within one decode step
/// when its client goes away or its deadline passes.
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

    /// The store namespace of a tenant and an optional `cache_salt` (which only narrows).
    static func namespace(tenant: String, salt: String?) throws -> StoreNamespace {
        if let salt {
            guard !salt.isEmpty, salt.utf8.count <= 256 else { throw APIError(.badRequest, "cache_salt must hold 1 to 256 bytes") }
        }
        return StoreNamespace(tenant: tenant, salt: salt)
    }

    /// Refuses a request that names a model other than the one served (OpenAI's 404); a
    /// request naming none gets the served model.
    static func checkModel(_ name: String?, service: KVTCService) throws {
        if let name, name != service.modelName { throw APIError.modelNotFound(name) }
    }

    /// Refuses a prompt larger than the limit before any tokenization.
    static func checkPromptBytes(_ bytes: Int, service: KVTCService) throws {
        guard bytes <= service.limits.maxPromptBytes else {
            throw APIError(.contentTooLarge, "the prompt holds \(bytes) bytes of text; this server accepts at most \(service.limits.maxPromptBytes)")
        }
    }

    static func identifier(_ prefix: String) -> String {
        prefix + String(UInt64.random(in: 0...UInt64.max), radix: 36)
    }

    /// How a request's generation ended, as OpenAI reports it: a stop at the deadline is
    /// `length` (the reply was cut short), a stop because the client left is `stop`.
    static func finish(_ o: GenerationOutcome, deadline: Date) -> FinishReason {
        o.stopReason == .cancelled && Date() >= deadline ? .length : FinishReason(o.stopReason)
    }

    static func chat(_ body: ChatCompletionRequest, principal: Principal, context: ServerRequestContext,
                     service: KVTCService) async throws -> Response {
        try checkModel(body.model, service: service)
        guard !body.messages.isEmpty else { throw APIError(.badRequest, "'messages' must not be empty") }
        let p = try parameters(maxTokens: body.maxCompletionTokens ?? body.maxTokens, temperature: body.temperature,
                               topP: body.topP, seed: body.seed, n: body.n, stream: body.stream,
                               streamOptions: body.streamOptions, service: service)
        let namespace = try namespace(tenant: principal.tenant, salt: body.cacheSalt)
        try checkPromptBytes(body.messages.reduce(0) { $0 + $1.content.utf8.count }, service: service)
        let tokens = try await promptTokens(service) { () throws(EngineError) in try await service.engine.promptTokens(chat: body.messages) }
        let request = GenerationRequest(promptTokens: tokens, maxTokens: p.maxTokens, sampling: p.sampling, namespace: namespace)
        let id = identifier("chatcmpl-"), created = Int(Date().timeIntervalSince1970), name = service.modelName
        let deadline = Date().addingTimeInterval(service.limits.requestTimeout)
        if !p.stream {
            let o = try await run(request, deadline: deadline, context: context, service: service)
            let response = ChatCompletionResponse(
                id: id, object: "chat.completion", created: created, model: name,
                choices: [.init(index: 0, message: ChatMessage(role: .assistant, content: o.text), delta: nil,
                                finishReason: finish(o, deadline: deadline))],
                usage: Usage(o), kvtc: Timings(o))
            return JSONBody.response(response)
        }
        @Sendable func chunk(_ delta: ChatCompletionResponse.Delta?, finish: FinishReason? = nil, usage: Usage? = nil, timings: Timings? = nil) -> ChatCompletionResponse {
            ChatCompletionResponse(id: id, object: "chat.completion.chunk", created: created, model: name,
                                   choices: delta == nil && finish == nil ? [] : [.init(index: 0, message: nil, delta: delta ?? .init(), finishReason: finish)],
                                   usage: usage, kvtc: timings)
        }
        return try await stream(request, deadline: deadline, context: context, service: service,
                                first: chunk(.init(role: .assistant, content: "")),
                                piece: { chunk(.init(role: nil, content: $0)) },
                                last: { o in
                                    var events = [chunk(.init(), finish: finish(o, deadline: deadline), timings: Timings(o))]
                                    if p.includeUsage { events.append(chunk(nil, usage: Usage(o))) }
                                    return events
                                })
    }

    static func text(_ body: CompletionRequest, principal: Principal, context: ServerRequestContext,
                     service: KVTCService) async throws -> Response {
        try checkModel(body.model, service: service)
        let p = try parameters(maxTokens: body.maxTokens, temperature: body.temperature, topP: body.topP, seed: body.seed,
                               n: body.n, stream: body.stream, streamOptions: body.streamOptions, service: service)
        let namespace = try namespace(tenant: principal.tenant, salt: body.cacheSalt)
        let tokens: [Int]
        switch body.prompt {
        case .text(let s):
            try checkPromptBytes(s.utf8.count, service: service)
            tokens = try await promptTokens(service) { () throws(EngineError) in try await service.engine.promptTokens(text: s) }
        case .tokens(let t): tokens = t
        }
        let request = GenerationRequest(promptTokens: tokens, maxTokens: p.maxTokens, sampling: p.sampling, namespace: namespace)
        let id = identifier("cmpl-"), created = Int(Date().timeIntervalSince1970), model = service.modelName
        let deadline = Date().addingTimeInterval(service.limits.requestTimeout)
        if !p.stream {
            let o = try await run(request, deadline: deadline, context: context, service: service)
            return JSONBody.response(CompletionResponse(
                id: id, object: "text_completion", created: created, model: model,
                choices: [.init(index: 0, text: o.text, finishReason: finish(o, deadline: deadline))], usage: Usage(o), kvtc: Timings(o)))
        }
        @Sendable func chunk(_ text: String?, finish: FinishReason? = nil, usage: Usage? = nil, timings: Timings? = nil) -> CompletionResponse {
            CompletionResponse(id: id, object: "text_completion", created: created, model: model,
                               choices: text == nil ? [] : [.init(index: 0, text: text!, finishReason: finish)],
                               usage: usage, kvtc: timings)
        }
        return try await stream(request, deadline: deadline, context: context, service: service, first: nil,
                                piece: { chunk($0) }, last: { o in
            var events = [chunk("", finish: finish(o, deadline: deadline), timings: Timings(o))]
            if p.includeUsage { events.append(chunk(nil, usage: Usage(o))) }
            return events
        })
    }

    /// Tokens from the engine, its errors as HTTP errors.
    static func promptTokens(_ service: KVTCService, _ body: () async throws(EngineError) -> [Int]) async throws -> [Int] {
        do throws(EngineError) { return try await body() } catch { throw apiError(error, service: service) }
    }

    /// Takes a slot in the bounded queue, or answers 429 (queue full) / 503 (deadline).
    static func admit(_ service: KVTCService, deadline: Date) async throws {
        do throws(Admission.Refusal) { try await service.admission.acquire(deadline: deadline) } catch {
            service.metrics.refused(error)
            switch error {
            case .queueFull:
                throw APIError(.tooManyRequests, "the server is busy (\(service.admission.concurrent) running, \(service.admission.queue) waiting); retry later",
                               headers: [.retryAfter: "1"])
            case .timedOut:
                throw APIError(.serviceUnavailable, "the request waited past its deadline of \(Int(service.limits.requestTimeout)) s",
                               headers: [.retryAfter: "1"])
            case .cancelled:
                throw APIError(.init(code: 499, reasonPhrase: "Client Closed Request"), "the client went away")
            }
        }
    }

    /// The HTTP error for an engine error: the client's fault is a 400 with the reason; a
    /// model failure is a generic 500 and an upstream engine's failure a 502 (both logged).
    static func apiError(_ error: EngineError, service: KVTCService) -> APIError {
        switch error {
        case .invalidRequest(let m): return APIError(.badRequest, m)
        case .model(let e):
            service.logger.error("generation failed: \(e)")
            return APIError.internalError
        case .upstream(let m):
            service.logger.error("upstream engine failed: \(m)")
            return APIError(.badGateway, "the inference backend failed; retry the request", headers: [.retryAfter: "1"])
        }
    }

    /// The HTTP error for an error an engine's event stream ended with.
    static func apiError(any error: any Error, service: KVTCService) -> APIError {
        if let e = error as? EngineError { return apiError(e, service: service) }
        service.logger.error("generation failed: \(error)")
        return APIError.internalError
    }

    /// Runs a request to completion, mapping engine errors to HTTP errors.
    static func run(_ request: GenerationRequest, deadline: Date, context: ServerRequestContext,
                    service: KVTCService) async throws -> GenerationOutcome {
        do { try service.engine.validate(request) } catch { throw apiError(error, service: service) }
        try await admit(service, deadline: deadline)
        defer { service.admission.release() }
        let connection = context.connection
        var request = request
        request.isCancelled = { (connection?.isClosed ?? false) || Date() >= deadline }
        do {
            let outcome = try await service.engine.complete(request)
            if outcome.stopReason == .cancelled { service.metrics.cancelled() }
            return outcome
        } catch {
            throw apiError(error, service: service)
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
    /// `last`, then `data: [DONE]`. Request errors found before generation, and refusals
    /// by the queue, still answer 4xx/5xx with their status; a failure after the stream has
    /// started is an error event whose code has the right class (400 for the request,
    /// 500 for the server). Generation stops when the client stops reading.
    static func stream<Event: Encodable & Sendable>(_ request: GenerationRequest, deadline: Date, context: ServerRequestContext,
                                                    service: KVTCService, first: Event?,
                                                    piece: @escaping @Sendable (String) -> Event,
                                                    last: @escaping @Sendable (GenerationOutcome) -> [Event]) async throws -> Response {
        do { try service.engine.validate(request) } catch { throw apiError(error, service: service) }
        try await admit(service, deadline: deadline)
        let (events, continuation) = AsyncStream<ByteBuffer>.makeStream()
        let consumerGone = ConnectionLiveness()
        continuation.onTermination = { _ in consumerGone.markClosed() }
        if let first { continuation.yield(sse(first)) }
        let connection = context.connection
        var request = request
        request.isCancelled = { consumerGone.isClosed || (connection?.isClosed ?? false) || Date() >= deadline }
        Task { [request] in
            defer { service.admission.release() }
            do {
                for try await event in service.engine.generate(request) {
                    switch event {
                    case .piece(let text):
                        if !text.isEmpty { continuation.yield(sse(piece(text))) }
                    case .finished(let outcome):
                        if outcome.stopReason == .cancelled { service.metrics.cancelled() }
                        for e in last(outcome) { continuation.yield(sse(e)) }
                    }
                }
            } catch {
                continuation.yield(sse(apiError(any: error, service: service).body))
            }
            continuation.yield(ByteBuffer(string: "data: [DONE]\n\n"))
            continuation.finish()
        }
        return Response(status: .ok,
                        headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                        body: ResponseBody(asyncSequence: events))
    }
}
