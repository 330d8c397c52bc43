import ArgumentParser
import Foundation
import KVTCModels
import KVTCRuntime
import KVTCTokenizers
import KVTCStore

/// `kvtc chat`: multi-turn chat in the terminal, restoring each turn's context from the
/// compressed store and showing cached vs new tokens and time to first token.
struct ChatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat with the model in the terminal; each turn restores the conversation's cache from the store.",
        discussion: "Type a message and press return. /reset starts over, /quit (or end of input) leaves.")

    @OptionGroup var modelOptions: ModelCommandOptions
    @OptionGroup var storeOptions: StoreCommandOptions

    @Option(name: .long, help: "System prompt (default: the model's own).")
    var system: String?

    @Option(name: .long, help: "Maximum tokens per reply.")
    var maxTokens = 256

    @Option(name: .long, help: "Sampling temperature (0 = greedy).")
    var temperature: Float = 0

    @Flag(name: .long, help: "Recompute every turn instead of restoring from the store.")
    var noStore = false

    func run() async throws {
        let model = try modelOptions.load()
        let store: CacheStore? = noStore ? nil : try await storeOptions.makeStore(model: model).0
        let engine = LocalEngine(model: model, store: store)
        var messages: [ChatMessage] = system.map { [ChatMessage(role: .system, content: $0)] } ?? []
        let initial = messages
        var turn = 0
        warn("kvtc chat: \(store.map { "store \($0.chain.identity)" } ?? "no store, recomputing every turn"). /reset, /quit.")
        while true {
            FileHandle.standardOutput.write(Data("\n> ".utf8))
            guard let line = readLine() else { break }
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            if text == "/quit" || text == "/exit" { break }
            if text == "/reset" { messages = initial; turn = 0; warn("(conversation reset)"); continue }
            messages.append(ChatMessage(role: .user, content: text))
            let tokens = model.chatPromptTokens(messages)
            let request = GenerationRequest(promptTokens: tokens, maxTokens: maxTokens,
                                            sampling: SamplingOptions(temperature: temperature, seed: UInt64(turn)))
            do {
                let outcome = try await engine.generate(request) { _, piece in
                    FileHandle.standardOutput.write(Data(piece.utf8))
                    return true
                }
                turn += 1
                messages.append(ChatMessage(role: .assistant, content: outcome.text))
                warn(String(format: "\n[turn %d: %d prompt tokens = %d cached + %d new; TTFT %.0f ms (restore %.0f ms, prefill %.0f ms); %d tokens in %.2f s]",
                            turn, outcome.promptTokens, outcome.cachedTokens, outcome.prefilledTokens,
                            outcome.timeToFirstTokenSeconds * 1000, outcome.restoreSeconds * 1000, outcome.prefillSeconds * 1000,
                            outcome.tokens.count, outcome.decodeSeconds))
            } catch {
                messages.removeLast()
                warn("\nkvtc: \(error)")
            }
        }
        // A Redis tier writes in the background: let the last turn's entries land.
        await store?.tier.flush()
    }
}
