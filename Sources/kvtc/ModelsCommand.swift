import ArgumentParser
import Foundation
import KVTCModels

/// `kvtc models`: the models `--model NAME` fetches and the architectures `--model FILE` runs.
struct ModelsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "models",
        abstract: "List the models that --model fetches by name, and the supported GGUF architectures.")

    func run() throws {
        let store = ModelStore()
        print("name            cached  source (PyPI)              file")
        for e in ModelRegistry.catalog {
            let cached = FileManager.default.fileExists(atPath: store.path(for: e.source).path) ? "yes" : "no"
            let name = e.name + (e.name == ModelRegistry.defaultModelName ? "*" : "")
            print(name.padding(toLength: 15, withPad: " ", startingAt: 0) + " "
                  + cached.padding(toLength: 7, withPad: " ", startingAt: 0) + " "
                  + e.source.requirement.padding(toLength: 26, withPad: " ", startingAt: 0) + " " + e.source.fileName)
            print("                " + e.summary + ", sha256 " + e.source.sha256.prefix(16) + "…")
        }
        print("(* the default; models are cached in \(store.cacheDirectory.appendingPathComponent("models").path))")
        print("GGUF architectures: " + ModelRegistry.families.keys.sorted().joined(separator: ", "))
    }
}
