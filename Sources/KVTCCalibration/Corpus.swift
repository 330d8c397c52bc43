import Crypto
import Foundation
import KVTCNumerics

/// The text corpus shipped with the tool: a calibration part and a held-out part that
/// never share a file (see `Corpus/SOURCES.md` for each file's source and licence).
public struct Corpus: Sendable {
    /// One text file.
    public struct Document: Sendable {
        public var name: String
        public var text: String
        public init(name: String, text: String) {
            self.name = name
            self.text = text
        }
    }

    public var calibration: [Document]
    public var heldOut: [Document]
    /// SHA-256 over every file's name and bytes, identifying the corpus.
    public var hash: String

    /// Errors loading a corpus.
    public enum LoadError: Error, CustomStringConvertible {
        case missing(String)
        public var description: String {
            switch self { case .missing(let m): return "corpus not found: \(m)" }
        }
    }

    /// A corpus from documents in memory.
    public init(calibration: [Document], heldOut: [Document]) {
        self.calibration = calibration
        self.heldOut = heldOut
        var h = SHA256()
        for d in calibration + heldOut { h.update(data: Array(d.name.utf8)); h.update(data: Array(d.text.utf8)) }
        hash = hexString(Array(h.finalize()))
    }

    /// Loads a corpus directory holding `calibration/` and `heldout/`.
    public init(directory: URL) throws(LoadError) {
        let fm = FileManager.default
        func load(_ sub: String) throws(LoadError) -> [Document] {
            let dir = directory.appendingPathComponent(sub)
            guard let names = try? fm.contentsOfDirectory(atPath: dir.path) else { throw .missing(dir.path) }
            return names.sorted().compactMap { n in
                guard let t = try? String(contentsOf: dir.appendingPathComponent(n), encoding: .utf8) else { return nil }
                return Document(name: n, text: t)
            }
        }
        let calibration = try load("calibration"), heldOut = try load("heldout")
        guard !calibration.isEmpty, !heldOut.isEmpty else { throw .missing("\(directory.path) has an empty part") }
        self.init(calibration: calibration, heldOut: heldOut)
    }

    /// The corpus shipped inside the tool.
    public static func bundled() throws(LoadError) -> Corpus {
        guard let url = Bundle.module.url(forResource: "Corpus", withExtension: nil) else {
            throw .missing("the bundled corpus resource")
        }
        return try Corpus(directory: url)
    }
}
