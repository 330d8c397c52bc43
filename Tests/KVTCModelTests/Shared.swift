import Foundation
@testable import KVTCModel

/// One model and one tokenizer per test process, loaded lazily through the ``ModelStore``
/// (fetched with pip if missing; failing to obtain it is a test failure, not a skip).
enum Shared {
    static let model: Result<LlamaModel, ModelLoadError> = Result { () throws(ModelLoadError) -> LlamaModel in
        try LlamaModel.loadDefault()
    }

    static let gguf: Result<GGUFFile, ModelLoadError> = Result { () throws(ModelLoadError) -> GGUFFile in
        let url: URL
        do throws(ModelStoreError) { url = try ModelStore().ensure() } catch { throw .store(error) }
        do throws(GGUFError) { return try GGUFFile(path: url.path) } catch { throw .model(.gguf(error)) }
    }

    static let tokenizer: Result<Tokenizer, ModelLoadError> = Result { () throws(ModelLoadError) -> Tokenizer in
        if case .success(let m) = model { return m.tokenizer }
        let g = try gguf.get()
        do throws(TokenizerError) { return try Tokenizer(gguf: g) } catch { throw .model(.tokenizer(error)) }
    }
}
