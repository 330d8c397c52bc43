import Foundation
import Testing
@testable import KVTCModels

@Suite struct ModelStoreTests {
    func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("kvtc-store-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test func cacheDirectoryFromEnvironment() {
        #expect(ModelStore.defaultCacheDirectory(environment: ["KVTC_CACHE_DIR": "/a/b", "XDG_CACHE_HOME": "/x", "HOME": "/h"]).path == "/a/b")
        #expect(ModelStore.defaultCacheDirectory(environment: ["XDG_CACHE_HOME": "/x", "HOME": "/h"]).path == "/x/kvtc")
        #expect(ModelStore.defaultCacheDirectory(environment: ["HOME": "/h"]).path == "/h/.cache/kvtc")
        let store = ModelStore(cacheDirectory: URL(fileURLWithPath: "/c"))
        #expect(store.path().path == "/c/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    @Test func sha256() throws {
        #expect(ModelStore.sha256Hex(bytes: Array("abc".utf8))
                == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("f")
        let bytes = (0..<(5 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) } // spans two reads
        try Data(bytes).write(to: file)
        #expect(try ModelStore.sha256Hex(path: file.path) == ModelStore.sha256Hex(bytes: bytes))
        #expect(throws: ModelStoreError.self) { try ModelStore.sha256Hex(path: dir.appendingPathComponent("none").path) }
    }

    @Test func cachedFileIsVerifiedOnceThroughTheSidecar() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = ModelStore(cacheDirectory: dir)
        let contents = Array("not really a model".utf8)
        let source = ModelSource(fileName: "m.gguf", requirement: "unused", pathInWheel: "unused",
                                 sha256: ModelStore.sha256Hex(bytes: contents))
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("models"), withIntermediateDirectories: true)
        try Data(contents).write(to: store.path(for: source))
        var messages: [String] = []
        // Present and matching: no fetch; the hash is recorded in the sidecar.
        #expect(try store.ensure(source) { messages.append($0) } == store.path(for: source))
        #expect(messages == ["verifying m.gguf"])
        let sidecar = URL(fileURLWithPath: store.path(for: source).path + ".sha256.json")
        #expect(FileManager.default.fileExists(atPath: sidecar.path))
        messages = []
        _ = try store.ensure(source) { messages.append($0) }
        #expect(messages.isEmpty) // served from the sidecar, not rehashed
        // The sidecar is trusted while size and mtime match (a forged record is believed)...
        var record = try JSONDecoder().decode(ModelStore.HashRecord.self, from: Data(contentsOf: sidecar))
        record.sha256 = String(repeating: "0", count: 64)
        try JSONEncoder().encode(record).write(to: sidecar)
        #expect(try store.verifiedCached(store.path(for: source), expected: source.sha256) { _ in } == false)
        // ...and ignored once the file changes.
        try Data(contents + [1]).write(to: store.path(for: source))
        #expect(try store.verifiedCached(store.path(for: source), expected: source.sha256) { _ in } == false)
        try Data(contents).write(to: store.path(for: source))
        #expect(try store.verifiedCached(store.path(for: source), expected: source.sha256) { _ in } == true)
    }

    @Test func failingToolIsATypedError() {
        #expect {
            try ModelStore.run("/usr/bin/env", ["sh", "-c", "echo boom >&2; exit 3"])
        } throws: { error in
            guard case ModelStoreError.toolFailed(_, let status, let output) = error else { return false }
            return status == 3 && output.contains("boom")
        }
        #expect(throws: ModelStoreError.self) { try ModelStore.run("/nonexistent/tool", []) }
    }
}
