import Foundation
import KVTCStore

// A process for the disk-tier crash test: it writes self-describing entries into a disk
// tier until it is killed. Entry `k` of generation `g` is three little-endian u64 words
// `k, g, n` followed by `n` bytes of value `(k * 31 + g * 17) & 0xFF`. After every key has
// been written once it prints "ready". The test kills it with SIGKILL, reopens the
// directory and checks that every key still holds one complete, consistent entry.

let arguments = CommandLine.arguments
guard arguments.count == 3, let keyCount = Int(arguments[2]), (1...255).contains(keyCount) else {
    FileHandle.standardError.write(Data("usage: KVTCDiskWriter DIRECTORY KEYS(1-255)\n".utf8))
    exit(2)
}

func key(_ k: Int) -> StoreKey { StoreKey(bytes: [UInt8(k)] + [UInt8](repeating: 0xA5, count: 31))! }

do {
    // Durable writes (fsync before rename) as a server keeping its store would do.
    let tier = try DiskTier(directory: URL(fileURLWithPath: arguments[1]), quota: 1 << 36, synchronous: true)
    var generation = 0
    while true {
        for k in 0..<keyCount {
            let length = 250_000 + (k * 7919 + generation * 104_729) % 1_750_000
            var value = [UInt8](repeating: UInt8((k * 31 + generation * 17) & 0xFF), count: 24 + length)
            for (i, word) in [k, generation, length].enumerated() {
                withUnsafeBytes(of: UInt64(word).littleEndian) { value.replaceSubrange((8 * i)..<(8 * i + 8), with: $0) }
            }
            try await tier.put(key(k), value)
        }
        if generation == 0 {
            FileHandle.standardOutput.write(Data("ready\n".utf8))
        }
        generation += 1
    }
} catch {
    FileHandle.standardError.write(Data("KVTCDiskWriter: \(error)\n".utf8))
    exit(1)
}
