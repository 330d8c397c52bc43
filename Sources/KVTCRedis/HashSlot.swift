/// Redis Cluster's key slots: CRC16 (XMODEM) of the key, or of its hash tag, modulo 16384.
public enum HashSlot {
    /// Slots in a cluster.
    public static let count = 16384

    private static let table: [UInt16] = (0..<256).map { i -> UInt16 in
        var crc = UInt16(i) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }

    /// CRC16-XMODEM (polynomial 0x1021, initial 0), as Redis Cluster defines it.
    public static func crc16<C: Collection>(_ bytes: C) -> UInt16 where C.Element == UInt8 {
        var crc: UInt16 = 0
        for b in bytes { crc = (crc << 8) ^ table[Int(UInt8(crc >> 8) ^ b)] }
        return crc
    }

    /// The slot of `key`: only the part between the first `{` and the next `}` is hashed
    /// when that part is non-empty (the hash tag).
    public static func of(_ key: [UInt8]) -> Int {
        if let open = key.firstIndex(of: UInt8(ascii: "{")),
           let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1 {
            return Int(crc16(key[(open + 1)..<close])) % count
        }
        return Int(crc16(key)) % count
    }
}
