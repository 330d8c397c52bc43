import Foundation
import Testing
@testable import KVTCModels

/// The vectorised exponentials the softmax, SiLU and GELU use in release builds (tests run
/// the scalar debug loops around them, so these call the kernels directly).
@Suite struct FastMathTests {
    /// `2^y` within the polynomial's ~2e-7 relative error (plus one f32 rounding) from -126
    /// to 127, clamped outside; `exp` the same through `2^(x log2 e)` (plus `|x| 2^-23`, from
    /// rounding `log2 e` and `x log2 e`).
    @Test func exponentialsMatchTheLibrary() {
        var worst2 = 0.0, worstE = 0.0
        var y: Float = -126
        while y <= 127 {
            let lanes = FastMath.V((0..<8).map { y + Float($0) * 0.0137 })
            let got = FastMath.exp2x8(lanes)
            for i in 0..<8 where lanes[i] <= 127 {
                let want = Foundation.exp2(Double(lanes[i]))
                worst2 = max(worst2, abs(Double(got[i]) - want) / want)
            }
            let x = lanes * 0.6
            let e = FastMath.exp8(x)
            for i in 0..<8 {
                let want = Foundation.exp(Double(x[i]))
                // Rounding `log2 e` and `x log2 e` to f32 moves `y` by up to `|y| 2^-23`: `exp` by `|x| 2^-23`.
                worstE = max(worstE, abs(Double(e[i]) - want) / want / (3.5e-7 + Double(abs(x[i])) * 0x1p-23))
            }
            y += 0.1
        }
        #expect(worst2 < 3e-7, "2^y relative error \(worst2)")
        #expect(worstE < 1, "exp error \(worstE) of its bound 3.5e-7 + |x| 2^-23")
        // Outside the range: clamped, never NaN or a wrapped exponent.
        let out = FastMath.exp2x8(FastMath.V(-1000, -127, -126.5, 127.5, 128, 1000, 0, -0.5))
        #expect(out[0] > 0 && out[0] <= 1.2e-38 && out[1] <= 1.2e-38)
        #expect(out[3] == out[4] && out[4] == out[5] && abs(Double(out[5]) - 0x1p127) / 0x1p127 < 3e-7)
        #expect(out[6] == 1 && abs(Double(out[7]) - 0.5.squareRoot()) < 1e-7)
    }
}
