import Foundation
import HTTPTypes
import Hummingbird
import KVTCRuntime
import KVTCTokenizers
import KVTCStore

/// The HTTP routes of the server.
///
/// Every route but `/health` needs a key when the server has a key file (`/metrics` too,
/// unless it is public); the raw KV routes exist only with `--kv-api` and need an admin key.
public enum Routes {
    /// A router with every route of the server.
    public static func router(for service: KVTCService) -> Router<ServerRequestContext> {
        let router = Router(context: ServerRequestContext.self)
        router.add(middleware: JSONErrorMiddleware(metrics: service.metrics, logger: service.logger))
        router.get("/health") { _, _ in
            service.metrics.request("health")
            return JSONBody.response(await health(service))
        }
        router.get("/metrics") { request, _ in
            service.metrics.request("metrics")
            if !service.security.publicMetrics { _ = try authenticate(request, service) }
            let text = service.metrics.render(store: service.store?.counters, tiers: await service.tierStats(),
                                              admission: service.admission.load, engine: service.engine.counters)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
        }
        router.get("/v1/models") { request, _ in
            service.metrics.request("models")
            _ = try authenticate(request, service)
            return JSONBody.response(ModelList(data: [.init(id: service.modelName, object: "model", created: 0, ownedBy: "kvtc")]))
        }
        router.post("/v1/chat/completions") { request, context in
            service.metrics.request("chat_completions")
            let principal = try authenticate(request, service)
            var request = request
            let body = try await JSONBody.decode(ChatCompletionRequest.self, from: &request, limit: service.limits.maxBodyBytes)
            return try await Completions.chat(body, principal: principal, context: context, service: service)
        }
        router.post("/v1/completions") { request, context in
            service.metrics.request("completions")
            let principal = try authenticate(request, service)
            var request = request
            let body = try await JSONBody.decode(CompletionRequest.self, from: &request, limit: service.limits.maxBodyBytes)
            return try await Completions.text(body, principal: principal, context: context, service: service)
        }
        guard service.security.kvAPI else { return router }
        router.post("/v1/kv/lookup") { request, _ in
            service.metrics.request("kv_lookup")
            let principal = try authenticateAdmin(request, service)
            var request = request
            let body = try await JSONBody.decode(LookupRequest.self, from: &request, limit: service.limits.maxBodyBytes)
            let namespace = try Completions.namespace(tenant: body.tenant ?? principal.tenant, salt: body.cacheSalt)
            return JSONBody.response(try await lookup(body, namespace: namespace, service: service))
        }
        router.get("/v1/kv/:key") { request, context in
            service.metrics.request("kv_get")
            let principal = try authenticateAdmin(request, service)
            let (store, key, namespace) = try rawTarget(service, request, context, principal)
            guard let bytes = await store.rawEntry(key, namespace: namespace) else { throw APIError(.notFound, "no entry \(key.hex)") }
            var headers: HTTPFields = [.contentType: "application/octet-stream"]
            if let signer = service.security.signer, let name = HTTPField.Name(EntrySigner.header) {
                headers[name] = signer.sign(key, bytes)
            }
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
        }
        router.put("/v1/kv/:key") { request, context in
            service.metrics.request("kv_put")
            let principal = try authenticateAdmin(request, service)
            let (store, key, namespace) = try rawTarget(service, request, context, principal)
            var request = request
            let buffer: ByteBuffer
            do { buffer = try await request.collectBody(upTo: service.limits.maxEntryBytes) } catch {
                throw APIError(.contentTooLarge, "the entry exceeds \(service.limits.maxEntryBytes) bytes")
            }
            let bytes = Array(buffer.readableBytesView)
            if let signer = service.security.signer {
                let signature = HTTPField.Name(EntrySigner.header).flatMap { request.headers[$0] }
                guard signer.verify(signature, key, bytes) else {
                    throw APIError(.forbidden, "this server accepts only entries signed with its --kv-secret (header \(EntrySigner.header))")
                }
            }
            do throws(StoreError) { try await store.putRawEntry(key, bytes, namespace: namespace) } catch {
                switch error {
                case .exists: throw APIError(.conflict, error.description)
                case .tier(.entryTooLarge): throw APIError(.contentTooLarge, error.description)
                case .tier:
                    service.logger.error("PUT /v1/kv/\(key.hex): \(error)")
                    throw APIError.internalError
                default: throw APIError(.unprocessableContent, error.description)
                }
            }
            return JSONBody.response(["key": key.hex, "status": "stored"], status: .created)
        }
        return router
    }

    /// The caller's principal: from its key when the server has keys, else the shared tenant.
    static func authenticate(_ request: Request, _ service: KVTCService) throws -> Principal {
        guard let keys = service.security.keys else { return .local }
        guard let principal = keys.principal(authorization: request.headers[.authorization]) else {
            throw APIError(.unauthorized, "a valid API key is required (send 'Authorization: Bearer KEY')",
                           headers: [.wwwAuthenticate: "Bearer"])
        }
        return principal
    }

    /// The caller's principal, which must be an admin's.
    static func authenticateAdmin(_ request: Request, _ service: KVTCService) throws -> Principal {
        let principal = try authenticate(request, service)
        guard principal.isAdmin else { throw APIError(.forbidden, "the raw KV routes need an admin key") }
        return principal
    }

    struct Health: Codable {
        var status: String
        var model: String
        var modelHash: String
        var producer: String?
        var chunkTokens: Int?
        var tiers: [TierStats]

        enum CodingKeys: String, CodingKey {
            case status, model, producer, tiers
            case modelHash = "model_hash"
            case chunkTokens = "chunk_tokens"
        }
    }

    static func health(_ service: KVTCService) async -> Health {
        Health(status: "ok", model: service.modelName, modelHash: service.engine.card.identity,
               producer: service.store.map { $0.chain.identity.description },
               chunkTokens: service.store?.chain.chunkTokens, tiers: await service.tierStats())
    }

    /// The store, key and namespace a raw-entry route addresses (`?tenant=&cache_salt=`;
    /// the admin's own tenant by default).
    static func rawTarget(_ service: KVTCService, _ request: Request, _ context: ServerRequestContext,
                          _ principal: Principal) throws -> (CacheStore, StoreKey, StoreNamespace) {
        guard let store = service.store else { throw APIError(.notFound, "this server has no cache store") }
        let text = context.parameters.get("key") ?? ""
        guard let key = StoreKey(hex: text) else { throw APIError(.badRequest, "key must be 64 hexadecimal digits") }
        let query = request.uri.queryParameters
        let namespace = try Completions.namespace(tenant: query.get("tenant") ?? principal.tenant, salt: query.get("cache_salt"))
        return (store, key, namespace)
    }

    static func lookup(_ body: LookupRequest, namespace: StoreNamespace, service: KVTCService) async throws -> LookupResponse {
        let given = [body.tokens != nil, body.prompt != nil, body.messages != nil].filter { $0 }.count
        guard given == 1 else { throw APIError(.badRequest, "give exactly one of 'tokens', 'prompt' or 'messages'") }
        let tokens: [Int]
        if let t = body.tokens {
            tokens = t
        } else if let p = body.prompt {
            try Completions.checkPromptBytes(p.utf8.count, service: service)
            tokens = try await Completions.promptTokens(service) { () throws(EngineError) in try await service.engine.promptTokens(text: p) }
        } else {
            let messages = body.messages ?? []
            guard !messages.isEmpty else { throw APIError(.badRequest, "'messages' is empty") }
            try Completions.checkPromptBytes(messages.reduce(0) { $0 + $1.content.utf8.count }, service: service)
            tokens = try await Completions.promptTokens(service) { () throws(EngineError) in try await service.engine.promptTokens(chat: messages) }
        }
        guard let store = service.store else {
            return LookupResponse(totalTokens: tokens.count, matchedTokens: 0, chunkTokens: 0, chunkKeys: [], tailKey: nil)
        }
        let match = await store.lookup(tokens: tokens, namespace: namespace)
        return LookupResponse(totalTokens: tokens.count, matchedTokens: match?.matchedTokens ?? 0,
                              chunkTokens: store.chain.chunkTokens, chunkKeys: (match?.chunkKeys ?? []).map(\.hex),
                              tailKey: match?.tailKey?.hex)
    }
}
