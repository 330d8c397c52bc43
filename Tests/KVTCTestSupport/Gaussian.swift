import Foundation
import KVTCNumerics

extension SplitMix64 {
    /// A standard normal sample (Box-Muller), so that tests draw repeatable Gaussian data.
    public mutating func gaussian() -> Float {
        let u = Float.random(in: Float.ulpOfOne..<1, using: &self), v = Float.random(in: 0..<1, using: &self)
        return (-2 * log(u)).squareRoot() * cos(2 * .pi * v)
    }
}
