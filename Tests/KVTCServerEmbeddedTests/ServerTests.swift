import Foundation
import Hummingbird
import HummingbirdTesting
import Testing
import KVTCCache
import KVTCLlamaState
import KVTCModels
import KVTCRuntime
import KVTCTokenizers
import KVTCStore
@testable import KVTCServer

@Suite(.serialized) struct ServerTests {
    typealias F = ServerFixtures

    @Test func healthAndMetrics() async throws {
        let service = try F.service(model: try SharedModel.get())
        try await F.app(service).test(.live) { client in
            try await client.execute(uri: "/health", method: .get) { response in
                #expect(response.status == .ok)
                let body = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as? [String: Any]
                #expect(body?["status"] as? String == "ok")
                #expect(body?["model_hash"] as? String == ModelSource.smolLM2.sha256)
            }
            try await client.execute(uri: "/metrics", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType]?.hasPrefix("text/plain") == true)
                let text = String(buffer: response.body)
                for name in ["kvtc_cache_hits_total", "kvtc_cache_misses_total", "kvtc_tier_bytes{tier=\"memory\"}",
                             "kvtc_compression_ratio", "kvtc_restore_seconds_bucket", "kvtc_prefill_seconds_bucket"] {
                    #expect(text.contains(name), "\(name)")
                }
            }
        }
    }

    @Test func theNextTurnRestoresTheConversationAndAnswersAsRecomputed() async throws {
        let model = try SharedModel.get()
        let service = try F.service(model: model)
        let messages: [[String: String]] = [["role": "user", "content": "What is the capital of France?"]]
        let (first, second, next) = try await F.app(service).test(.live) { client in
            let request = F.json(["messages": messages, "max_tokens": 6, "temperature": 0])
            let first = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: F.jsonHeaders, body: request) {
                #expect($0.status == .ok)
                return try F.decode(ChatCompletionResponse.self, $0.body)
            }
            let reply = first.choices.first?.message?.content ?? ""
            let next = F.json(["messages": messages + [["role": "assistant", "content": reply],
                                                       ["role": "user", "content": "And of Italy?"]],
                               "max_tokens": 6])
            let second = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: F.jsonHeaders, body: next) {
                try F.decode(ChatCompletionResponse.self, $0.body)
            }
            return (first, second, next)
        }
        #expect(first.object == "chat.completion")
        #expect(first.usage?.promptTokensDetails.cachedTokens == 0)
        #expect(first.kvtc?.timeToFirstTokenSeconds ?? 0 > 0)
        let reply = try #require(first.choices.first?.message?.content)
        #expect(!reply.isEmpty)
        let usage = try #require(first.usage)
        #expect(usage.totalTokens == usage.promptTokens + usage.completionTokens)
        // The second turn restores the first turn's prompt and reply (what the cache held).
        let held = usage.promptTokens + usage.completionTokens - (first.choices.first?.finishReason == .length ? 1 : 0)
        #expect(second.usage?.promptTokensDetails.cachedTokens == held)
        #expect(second.kvtc?.prefilledTokens == second.usage!.promptTokens - held)
        // A fresh server recomputing everything answers exactly the same.
        let fresh = try F.service(model: model)
        let recomputed = try await F.app(fresh).test(.live) { client in
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: F.jsonHeaders, body: next) {
                try F.decode(ChatCompletionResponse.self, $0.body)
            }
        }
        #expect(recomputed.usage?.promptTokensDetails.cachedTokens == 0)
        #expect(recomputed.choices.first?.message?.content == second.choices.first?.message?.content)
        let counters = try #require(service.store?.counters)
        #expect(counters.hits == 1 && counters.misses == 1)
    }

    @Test func streamsServerSentEvents() async throws {
        let service = try F.service(model: try SharedModel.get())
        try await F.app(service).test(.live) { client in
            let messages: [[String: String]] = [["role": "user", "content": "Name a color."]]
            let plain = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: F.jsonHeaders,
                                                 body: F.json(["messages": messages, "max_tokens": 5])) {
                try F.decode(ChatCompletionResponse.self, $0.body)
            }
            let body = F.json(["messages": messages, "max_tokens": 5, "stream": true, "stream_options": ["include_usage": true]])
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: F.jsonHeaders, body: body) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == "text/event-stream")
                let events = F.events(response.body)
                #expect(events.last == "[DONE]")
                let chunks = try events.dropLast().map { try JSONDecoder().decode(ChatCompletionResponse.self, from: Data($0.utf8)) }
                #expect(chunks.allSatisfy { $0.object == "chat.completion.chunk" })
                #expect(chunks.first?.choices.first?.delta?.role == .assistant)
                let text = chunks.compactMap { $0.choices.first?.delta?.content }.joined()
                #expect(text == plain.choices.first?.message?.content)
                #expect(chunks.contains { $0.choices.first?.finishReason != nil && $0.kvtc != nil })
                let usage = try #require(chunks.last?.usage)
                #expect(usage.promptTokens == plain.usage?.promptTokens)
                #expect(usage.completionTokens == plain.usage?.completionTokens)
            }
        }
    }

    @Test func textCompletionsAcceptTextAndTokens() async throws {
        let model = try SharedModel.get()
        let service = try F.service(model: model)
        try await F.app(service).test(.live) { client in
            let text = try await client.execute(uri: "/v1/completions", method: .post, headers: F.jsonHeaders,
                                                body: F.json(["prompt": "One, two, three,", "max_tokens": 4])) {
                #expect($0.status == .ok)
                return try F.decode(CompletionResponse.self, $0.body)
            }
            #expect(text.object == "text_completion")
            #expect(text.usage?.completionTokens ?? 0 > 0)
            let ids = model.tokenizer.encode("One, two, three,", addBOS: model.tokenizer.addBOS)
            let tokens = try await client.execute(uri: "/v1/completions", method: .post, headers: F.jsonHeaders,
                                                  body: F.json(["prompt": ids, "max_tokens": 4])) {
                try F.decode(CompletionResponse.self, $0.body)
            }
            #expect(tokens.choices.first?.text == text.choices.first?.text)
            #expect(tokens.usage?.promptTokens == ids.count)
            try await client.execute(uri: "/v1/completions", method: .post, headers: F.jsonHeaders,
                                     body: F.json(["prompt": "Hi", "max_tokens": 3, "stream": true])) { response in
                let events = F.events(response.body)
                #expect(events.last == "[DONE]")
                #expect(events.count >= 2)
            }
        }
    }

    @Test func badRequestsGetJSONErrors() async throws {
        let service = try F.service(model: try SharedModel.get())
        try await F.app(service).test(.live) { client in
            let cases: [(String, HTTPRequest.Method, ByteBuffer?, HTTPResponse.Status)] = [
                ("/v1/chat/completions", .post, ByteBuffer(string: "{not json"), .badRequest),
                ("/v1/chat/completions", .post, nil, .badRequest),
                ("/v1/chat/completions", .post, F.json(["max_tokens": 3]), .badRequest),
                ("/v1/chat/completions", .post, F.json(["messages": [], "max_tokens": 3]), .badRequest),
                ("/v1/chat/completions", .post, F.json(["messages": [["role": "user", "content": "x"]], "max_tokens": 0]), .badRequest),
                ("/v1/chat/completions", .post, F.json(["messages": [["role": "user", "content": "x"]], "n": 2]), .badRequest),
                ("/v1/chat/completions", .post, F.json(["messages": [["role": "user", "content": "x"]], "temperature": -1]), .badRequest),
                ("/v1/chat/completions", .post, F.json(["messages": [["role": "robot", "content": "x"]]]), .badRequest),
                ("/v1/chat/completions", .post, F.json(["messages": "hello"]), .badRequest),
                ("/v1/completions", .post, F.json(["prompt": [999_999], "max_tokens": 2]), .badRequest),
                ("/v1/completions", .post, F.json(["prompt": [1, 2], "max_tokens": 2, "stream": true, "n": 3]), .badRequest),
                ("/v1/completions", .post, F.json(["prompt": "", "max_tokens": 2]), .badRequest),
                ("/v1/chat/completions", .post, F.json(["messages": [["role": "user", "content": "x"]], "cache_salt": ""]), .badRequest),
                // The raw KV routes do not exist without --kv-api.
                ("/v1/kv/lookup", .post, F.json(["tokens": [1]]), .notFound),
                ("/v1/kv/" + String(repeating: "0", count: 64), .get, nil, .notFound),
                ("/v1/kv/" + String(repeating: "0", count: 64), .put, ByteBuffer(string: "garbage"), .notFound),
                ("/v1/nothing", .get, nil, .notFound),
            ]
            for (uri, method, body, status) in cases {
                try await client.execute(uri: uri, method: method, headers: F.jsonHeaders, body: body) { response in
                    #expect(response.status == status, "\(method) \(uri)")
                    let error = try? F.decode(ErrorResponse.self, response.body)
                    #expect(error?.error.message.isEmpty == false, "\(method) \(uri): \(String(buffer: response.body))")
                }
            }
            // A prompt that does not fit the context with max_tokens.
            let long = Array(repeating: 28, count: 8200)
            try await client.execute(uri: "/v1/completions", method: .post, headers: F.jsonHeaders,
                                     body: F.json(["prompt": long, "max_tokens": 2])) { response in
                #expect(response.status == .badRequest)
            }
        }
        #expect(service.metrics.render(store: nil, tiers: []).contains("kvtc_http_errors_total{status=\"400\"}"))
    }

    @Test func rawEntriesMoveBetweenServers() async throws {
        let model = try SharedModel.get()
        let security = ServerSecurity(keys: F.keys, kvAPI: true)
        let source = try F.service(model: model, chunkTokens: 32, security: security)
        let target = try F.service(model: model, chunkTokens: 32, security: security)
        let user = F.headers(F.aliceKey), admin = F.headers(F.adminKey)
        let messages: [[String: String]] = [
            ["role": "system", "content": "You are a terse assistant. Answer in one short sentence. Never use lists. Be polite."],
            ["role": "user", "content": "Why is the sky blue? Explain briefly, please, for a child of ten years."],
        ]
        let entries: [(String, ByteBuffer)] = try await F.app(source).test(.live) { client in
            let first = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: user,
                                                 body: F.json(["messages": messages, "max_tokens": 2])) {
                try F.decode(ChatCompletionResponse.self, $0.body)
            }
            let lookupBody = F.json(["messages": messages + [["role": "assistant", "content": first.choices[0].message!.content]],
                                     "tenant": "alice"])
            // Only an admin may use the raw routes.
            let forbidden = try await client.execute(uri: "/v1/kv/lookup", method: .post, headers: user, body: lookupBody)
            #expect(forbidden.status == .forbidden)
            let lookup = try await client.execute(uri: "/v1/kv/lookup", method: .post, headers: admin, body: lookupBody) {
                try F.decode(LookupResponse.self, $0.body)
            }
            #expect(lookup.chunkTokens == 32)
            #expect(lookup.matchedTokens > 32 && lookup.matchedTokens < lookup.totalTokens)
            #expect(!lookup.chunkKeys.isEmpty, "\(lookup)")
            let tail = try #require(lookup.tailKey)
            var out: [(String, ByteBuffer)] = []
            for key in lookup.chunkKeys + [tail] {
                let response = try await client.execute(uri: "/v1/kv/\(key)?tenant=alice", method: .get, headers: admin)
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == "application/octet-stream")
                out.append((key, response.body))
            }
            return out + [("lookup", lookupBody), (String(lookup.matchedTokens), ByteBuffer())]
        }
        let sourceMatched = Int(entries.last!.0)!
        let lookupBody = entries[entries.count - 2].1
        try await F.app(target).test(.live) { client in
            let before = try await client.execute(uri: "/v1/kv/lookup", method: .post, headers: admin, body: lookupBody) {
                try F.decode(LookupResponse.self, $0.body)
            }
            #expect(before.matchedTokens == 0)
            // An entry under another key is refused.
            let refused = try await client.execute(uri: "/v1/kv/\(entries[0].0)?tenant=alice", method: .put, headers: admin, body: entries[1].1)
            #expect(refused.status == .unprocessableContent)
            // So is an entry put into another tenant than the one it was made for.
            let elsewhere = try await client.execute(uri: "/v1/kv/\(entries[0].0)?tenant=bob", method: .put, headers: admin, body: entries[0].1)
            #expect(elsewhere.status == .unprocessableContent)
            // A chunk whose payload declares far more tokens than a chunk holds (the shape of a
            // decompression bomb) is refused from its header.
            let chain = try #require(target.store).chain(for: StoreNamespace(tenant: "alice"))
            let chunkKey = try #require(StoreKey(hex: entries[0].0))
            var bomb = try StoreEntry(bytes: Array(entries[0].1.readableBytesView), key: chunkKey, chain: chain)
            var zeros = KVCache(geometry: model.geometry, rope: model.rope, reservingCapacity: 512)
            _ = zeros.appendZeroedTokens(positions: Array(0..<512))
            bomb.payload = try ExactRows.encode(zeros, precision: .fp16)
            let refusedBomb = try await client.execute(uri: "/v1/kv/\(entries[0].0)?tenant=alice", method: .put, headers: admin,
                                                       body: ByteBuffer(bytes: bomb.encoded()))
            #expect(refusedBomb.status == .unprocessableContent)
            #expect(String(buffer: refusedBomb.body).contains("shape"))
            for (key, body) in entries.dropLast(2) {
                let response = try await client.execute(uri: "/v1/kv/\(key)?tenant=alice", method: .put, headers: admin, body: body)
                #expect(response.status == .created)
            }
            // Uploads never overwrite.
            let again = try await client.execute(uri: "/v1/kv/\(entries[0].0)?tenant=alice", method: .put, headers: admin, body: entries[0].1)
            #expect(again.status == .conflict, "\(String(buffer: again.body))")
            let after = try await client.execute(uri: "/v1/kv/lookup", method: .post, headers: admin, body: lookupBody) {
                try F.decode(LookupResponse.self, $0.body)
            }
            #expect(after.matchedTokens > 32)
            #expect(after.matchedTokens == sourceMatched, "\(after)")
        }
    }

    @Test func concurrentRequestsAreServed() async throws {
        let service = try F.service(model: try SharedModel.get())
        try await F.app(service).test(.ahc(.http)) { client in
            try await withThrowingTaskGroup(of: ChatCompletionResponse.self) { group in
                for i in 0..<4 {
                    group.addTask {
                        let body = F.json(["messages": [["role": "user", "content": "Say the number \(i % 2)."]], "max_tokens": 3])
                        return try await client.execute(uri: "/v1/chat/completions", method: .post, headers: F.jsonHeaders, body: body) {
                            #expect($0.status == .ok)
                            return try F.decode(ChatCompletionResponse.self, $0.body)
                        }
                    }
                }
                var answers: [ChatCompletionResponse] = []
                for try await r in group { answers.append(r) }
                #expect(answers.count == 4)
                #expect(answers.allSatisfy { ($0.usage?.completionTokens ?? 0) > 0 })
            }
            try await client.execute(uri: "/health", method: .get) { #expect($0.status == .ok) }
        }
    }

    @Test func diskTierServesARestartedServer() async throws {
        let model = try SharedModel.get()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtc-server-\(UUID().uuidString)")
        let body = F.json(["messages": [["role": "user", "content": "Tell me a fact about cats."]], "max_tokens": 3])
        let reply: ChatCompletionResponse
        do {
            let first = try F.service(model: model, disk: dir)
            // A second server on the same directory is refused while the first holds it.
            #expect(throws: TierError.self) { _ = try F.service(model: model, disk: dir) }
            reply = try await F.app(first).test(.live) { client in
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: F.jsonHeaders, body: body) {
                    try F.decode(ChatCompletionResponse.self, $0.body)
                }
            }
            await first.store!.tier.flush()
        }
        let prompt = reply.usage!.promptTokens
        let nextTurn = F.json(["messages": [["role": "user", "content": "Tell me a fact about cats."],
                                            ["role": "assistant", "content": reply.choices[0].message!.content],
                                            ["role": "user", "content": "Another one."]], "max_tokens": 3])
        // The stopped server lets go of the directory once its last task has ended (as a
        // process does when it exits); that must happen, and soon.
        var restarted: KVTCService?
        let deadline = Date().addingTimeInterval(10)
        while restarted == nil {
            do { restarted = try F.service(model: model, disk: dir) } catch is TierError where Date() < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        let service = try #require(restarted)
        try await F.app(service).test(.live) { client in
            let r = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: F.jsonHeaders, body: nextTurn) {
                try F.decode(ChatCompletionResponse.self, $0.body)
            }
            #expect(r.usage?.promptTokensDetails.cachedTokens ?? 0 > prompt)
            let text = try await client.execute(uri: "/metrics", method: .get) { String(buffer: $0.body) }
            #expect(text.contains("kvtc_tier_hits_total{tier=\"disk\"} "))
        }
    }

    @Test func aConversationImportedFromLlamaCppIsContinuedWithItsTokensCached() async throws {
        let model = try SharedModel.get()
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("KVTCLlamaStateTests/Fixtures/f16-vtrans.ggsq")
        let state = try LlamaSequenceState(bytes: Array(try Data(contentsOf: fixture)))
        let service = try F.service(model: model, chunkTokens: 8)
        let receipt = try await LlamaStateTransfer.importState(state, model: model, store: try #require(service.store))
        #expect(receipt.storedTokens == state.tokens.count)
        let prompt = state.tokens.map(Int.init) + model.tokenizer.encode(" and then", parseSpecial: false)
        try await F.app(service).test(.live) { client in
            let r = try await client.execute(uri: "/v1/completions", method: .post, headers: F.jsonHeaders,
                                             body: F.json(["prompt": prompt, "max_tokens": 3])) {
                try F.decode(CompletionResponse.self, $0.body)
            }
            #expect(r.usage?.promptTokensDetails.cachedTokens == state.tokens.count)
        }
    }
}
