import Foundation
import Hummingbird
import KVTCModels
import KVTCRuntime
import KVTCTokenizers
import KVTCStore

/// The HTTP routes of the server.
public enum Routes {
    /// A router with every route of the server.
    public static func router(for service: KVTCService) -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: JSONErrorMiddleware(metrics: service.metrics))
        router.get("/health") { _, _ in
            service.metrics.request("health")
            return JSONBody.response(await health(service))
        }
        router.get("/metrics") { _, _ in
            service.metrics.request("metrics")
            let text = service.metrics.render(store: service.store?.counters, tiers: await service.tierStats())
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
        }
        router.post("/v1/chat/completions") { request, _ in
            service.metrics.request("chat_completions")
            var request = request
            let body = try await JSONBody.decode(ChatCompletionRequest.self, from: &request, limit: service.maxRequestBytes)
            return try await Completions.chat(body, service: service)
        }
        router.post("/v1/completions") { request, _ in
            service.metrics.request("completions")
            var request = request
            let body = try await JSONBody.decode(CompletionRequest.self, from: &request, limit: service.maxRequestBytes)
            return try await Completions.text(body, service: service)
        }
        router.post("/v1/kv/lookup") { request, _ in
            service.metrics.request("kv_lookup")
            var request = request
            let body = try await JSONBody.decode(LookupRequest.self, from: &request, limit: service.maxRequestBytes)
            return JSONBody.response(try await lookup(body, service: service))
        }
        router.get("/v1/kv/:key") { _, context in
            service.metrics.request("kv_get")
            let (store, key) = try storeAndKey(service, context)
            guard let bytes = await store.rawEntry(key) else { throw APIError(.notFound, "no entry \(key.hex)") }
            return Response(status: .ok, headers: [.contentType: "application/octet-stream"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
        }
        router.put("/v1/kv/:key") { request, context in
            service.metrics.request("kv_put")
            let (store, key) = try storeAndKey(service, context)
            var request = request
            let buffer: ByteBuffer
            do { buffer = try await request.collectBody(upTo: service.maxRequestBytes) } catch {
                throw APIError(.contentTooLarge, "the entry exceeds \(service.maxRequestBytes) bytes")
            }
            do throws(StoreError) { try await store.putRawEntry(key, Array(buffer.readableBytesView)) } catch {
                switch error {
                case .tier(.entryTooLarge): throw APIError(.contentTooLarge, error.description)
                case .tier: throw APIError(.internalServerError, error.description)
                default: throw APIError(.badRequest, error.description)
                }
            }
            return JSONBody.response(["key": key.hex, "status": "stored"], status: .created)
        }
        return router
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
        Health(status: "ok", model: service.modelName, modelHash: service.engine.model.identity,
               producer: service.store.map { $0.chain.identity.description },
               chunkTokens: service.store?.chain.chunkTokens, tiers: await service.tierStats())
    }

    static func storeAndKey(_ service: KVTCService, _ context: BasicRequestContext) throws -> (CacheStore, StoreKey) {
        guard let store = service.store else { throw APIError(.notFound, "this server has no cache store") }
        let text = context.parameters.get("key") ?? ""
        guard let key = StoreKey(hex: text) else { throw APIError(.badRequest, "key must be 64 hexadecimal digits") }
        return (store, key)
    }

    static func lookup(_ body: LookupRequest, service: KVTCService) async throws -> LookupResponse {
        let given = [body.tokens != nil, body.prompt != nil, body.messages != nil].filter { $0 }.count
        guard given == 1 else { throw APIError(.badRequest, "give exactly one of 'tokens', 'prompt' or 'messages'") }
        let tokenizer = service.engine.model.tokenizer
        let tokens: [Int]
        if let t = body.tokens {
            tokens = t
        } else if let p = body.prompt {
            tokens = tokenizer.encode(p, addBOS: tokenizer.addBOS)
        } else {
            let messages = body.messages ?? []
            guard !messages.isEmpty else { throw APIError(.badRequest, "'messages' is empty") }
            tokens = tokenizer.encode(service.engine.model.chatTemplate.render(messages, addGenerationPrompt: true))
        }
        guard let store = service.store else {
            return LookupResponse(totalTokens: tokens.count, matchedTokens: 0, chunkTokens: 0, chunkKeys: [], tailKey: nil)
        }
        let match = await store.lookup(tokens: tokens)
        return LookupResponse(totalTokens: tokens.count, matchedTokens: match?.matchedTokens ?? 0,
                              chunkTokens: store.chain.chunkTokens, chunkKeys: (match?.chunkKeys ?? []).map(\.hex),
                              tailKey: match?.tailKey?.hex)
    }
}
