import ArgumentParser
import Foundation
import KVTCGGUF
import KVTCLlamaState
import KVTCRuntime
import KVTCStore

/// `kvtc store import|export`: llama.cpp conversations into and out of a store directory.
struct StoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Move llama.cpp conversations (sequence state files) into and out of a kvtc store directory.",
        subcommands: [StoreImportCommand.self, StoreExportCommand.self])
}

/// The namespace flags of the store commands (a server's tenant and salt).
struct NamespaceOptions: ParsableArguments {
    @Option(help: "The tenant whose entries these are (as in the server's key file; default: a server without keys).")
    var tenant: String?

    @Option(help: "The cache_salt the server's requests will carry, if any.")
    var cacheSalt: String?

    var namespace: StoreNamespace { tenant == nil && cacheSalt == nil ? .shared : StoreNamespace(tenant: tenant ?? "", salt: cacheSalt) }
}

struct StoreImportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Store the conversations of llama.cpp state files under their token prefixes.",
        discussion: """
        Use the --profile, --ratio and --chunk-tokens the server will use: `kvtc serve --disk DIR` \
        (or `--redis URL`) then continues each conversation with its tokens counted as cached.
        """)

    @OptionGroup var modelOptions: ModelCommandOptions
    @OptionGroup var storeOptions: StoreCommandOptions
    @OptionGroup var namespaceOptions: NamespaceOptions

    @Argument(help: "llama.cpp sequence state files (llama_state_seq_save_file).")
    var states: [String]

    func validate() throws {
        guard storeOptions.disk != nil || storeOptions.redis != nil else {
            throw ValidationError("give the store directory with --disk, or a shared tier with --redis")
        }
        guard !states.isEmpty else { throw ValidationError("give at least one state file") }
    }

    func run() async throws {
        let model = try modelOptions.load()
        let (store, _) = try await storeOptions.makeStore(model: model)
        for path in states {
            let state: LlamaSequenceState
            do { state = try LlamaSequenceState(bytes: try readFile(path)) } catch let e as LlamaStateError { throw CommandError(path, e) }
            do {
                let r = try await LlamaStateTransfer.importState(state, model: model, store: store, namespace: namespaceOptions.namespace)
                print(String(format: "%@: %d tokens stored (%d chunks written, %d already present, %@)", path, r.storedTokens,
                             r.chunksWritten, r.chunksReused, formatBytes(r.bytesWritten)))
            } catch { throw CommandError(path, error) }
        }
        // A Redis tier writes in the background: wait for it before exiting.
        await store.tier.flush()
    }
}

struct StoreExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write the longest stored prefix of a conversation as a llama.cpp state file.")

    @OptionGroup var modelOptions: ModelCommandOptions
    @OptionGroup var storeOptions: StoreCommandOptions
    @OptionGroup var namespaceOptions: NamespaceOptions

    @Option(help: "Take the conversation's token ids from this llama.cpp state file.")
    var tokensOf: String?

    @Option(help: "Or: the conversation's token ids, comma-separated.")
    var tokens: String?

    @Option(help: "K/V type of the state: f16, bf16, f32 or q8_0.")
    var type = "f16"

    @Flag(help: "Write V untransposed, as llama.cpp does with flash attention.")
    var flashAttention = false

    @Option(name: .shortAndLong, help: "Where to write the state file.")
    var output: String

    func validate() throws {
        guard storeOptions.disk != nil || storeOptions.redis != nil else {
            throw ValidationError("give the store directory with --disk, or a shared tier with --redis")
        }
        guard (tokensOf == nil) != (tokens == nil) else { throw ValidationError("give exactly one of --tokens-of and --tokens") }
        guard ["f16", "bf16", "f32", "q8_0"].contains(type) else { throw ValidationError("--type must be f16, bf16, f32 or q8_0") }
    }

    func run() async throws {
        let ids: [Int]
        if let tokensOf {
            do { ids = try LlamaSequenceState(bytes: try readFile(tokensOf)).slotTokens().tokens.map(Int.init) } catch let e as LlamaStateError {
                throw CommandError(tokensOf, e)
            }
        } else {
            ids = try (tokens ?? "").split(separator: ",").map { part in
                guard let v = Int(part.trimmingCharacters(in: .whitespaces)) else { throw ValidationError("--tokens: '\(part)' is not a token id") }
                return v
            }
        }
        let model = try modelOptions.load()
        let (store, _) = try await storeOptions.makeStore(model: model)
        let ggml: GGMLType = ["f16": .f16, "bf16": .bf16, "f32": .f32, "q8_0": .q8_0][type]!
        do {
            let state = try await LlamaStateTransfer.exportState(tokens: ids, store: store, namespace: namespaceOptions.namespace,
                                                                layout: SlotStateLayout(keyType: ggml, valueType: ggml,
                                                                                        valuesTransposed: !flashAttention))
            try writeFile(output, state.encoded())
            print("\(state.streams[0].cells.count) of \(ids.count) tokens exported -> \(output)")
        } catch let e as LlamaStateTransferError {
            throw CommandError(output, e)
        }
    }
}
