import Foundation
import KVTCEmbeddedModel
import KVTCGGUF
import KVTCModels
import KVTCTestSupport
import Testing

/// Loading the embedded model's GGUF through the registry, whole and broken.
@Suite struct ModelLoadingTests {
    @Test func realModelDirectory() throws {
        let g = try EmbeddedModel.gguf()
        #expect(g.version == 3)
        #expect(try g.int("llama.block_count") == 30)
        #expect(try g.string("tokenizer.ggml.pre") == "smollm")
        #expect(g.tensor(named: "token_embd.weight")?.type == .q8_0)
        #expect(g.tensor(named: "blk.0.attn_q.weight")?.dimensions == [576, 576])
        #expect(g.tensor(named: "output.weight") == nil) // tied embeddings
    }

    @Test func theRegistryLoadsTheDefaultAsALlamaWithItsIdentityAndTemplate() throws {
        let m = try EmbeddedModel.get()
        let entry = try #require(ModelRegistry.entry(named: "smollm2-135m"))
        #expect(m.architecture == "llama")
        #expect(m.identity == entry.source.sha256)
        #expect(m.chatTemplate.prompt(user: "x").text.hasPrefix("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"))
        #expect(m.layerAttention.count == 30 && m.layerAttention.allSatisfy { $0.rope == m.rope && $0.window == nil })
        // By path, a catalog file is hashed to the same identity and keeps its template.
        let byPath = try ModelRegistry.load(m.path)
        #expect(byPath.identity == m.identity)
        #expect(byPath.chatTemplate.prompt(user: "x") == m.chatTemplate.prompt(user: "x"))
    }

    @Test func unusableFilesGiveTypedErrors() throws {
        #expect(throws: ModelError.gguf(.io(path: "/nonexistent.gguf", message: "No such file or directory"))) {
            try ModelRegistry.load(path: "/nonexistent.gguf")
        }
        // A valid GGUF without llama hyperparameters.
        try withTemporaryFile(GGUFBuilder.sample()) { path in
            #expect(throws: ModelError.gguf(.missing("llama.block_count"))) { try ModelRegistry.load(path: path) }
        }
        // A truncated copy of the real model.
        let real = try EmbeddedModel.gguf()
        let head = try Data(contentsOf: URL(fileURLWithPath: real.path), options: .alwaysMapped).prefix(2_000_000)
        try withTemporaryFile(Array(head)) { path in
            #expect(throws: ModelError.self) { try ModelRegistry.load(path: path) }
        }
    }
}
