import Foundation
import KVTCCodec

/// Renders evaluation results as a terminal table, JSON and an SVG rate-distortion plot.
public enum EvaluationReport {
    /// A fixed-width table, one row per method and setting.
    public static func table(_ results: [MethodResult]) -> String {
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        func ratio(_ r: Double, width n: Int) -> String {
            let s = Profile.formatRatio(r, fractionDigits: 2)
            return s.count >= n ? s : String(repeating: " ", count: n - s.count) + s
        }
        var lines = [pad("method", 23) + pad("setting", 10) + "     ratio     whole    mean KL   top-1  ppl exact  ppl dec.    err K    err V"]
        for r in results {
            let effective = r.effective_ratio > 1000 ? "      (all)" : ratio(r.effective_ratio, width: 10)
            lines.append(pad(r.method, 23) + pad(r.setting, 10) + effective + " " + ratio(r.whole_cache_ratio, width: 9)
                         + String(format: " %10.5f %6.1f%% %10.3f %9.3f %8.4f %8.4f",
                                  r.mean_kl, 100 * r.top1, r.ppl_exact, r.ppl_decoded,
                                  r.rel_err_keys, r.rel_err_values))
        }
        return lines.joined(separator: "\n")
    }

    /// `{"results": [...], ...}` with extra top-level fields.
    public static func json(_ results: [MethodResult], extra: [String: String] = [:], retrieval: [RetrievalResult] = []) -> String {
        struct Doc: Encodable {
            var results: [MethodResult]
            var retrieval: [RetrievalResult]
            var info: [String: String]
        }
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: (try? e.encode(Doc(results: results, retrieval: retrieval, info: extra))) ?? Data(), as: UTF8.self)
    }

    /// Mean KL against effective ratio on log-log axes, one curve per method.
    public static func svg(_ results: [MethodResult], title: String) -> String {
        // Methods that store nothing for the middle (ratio beyond any axis) are drawn as a
        // horizontal reference line at their KL.
        let references = results.filter { $0.effective_ratio > 1000 && $0.mean_kl.isFinite }
        let results = results.filter { $0.effective_ratio <= 1000 }
        let groups = Dictionary(grouping: results.filter { $0.mean_kl.isFinite && $0.effective_ratio.isFinite }, by: \.method)
        let names = groups.keys.sorted()
        let w = 900.0, h = 560.0, left = 80.0, right = 230.0, top = 50.0, bottom = 60.0
        let xs = results.map(\.effective_ratio).filter { $0 > 0 && $0.isFinite }
        let ys = (results + references).map { max($0.mean_kl, 1e-5) }.filter { $0.isFinite }
        let x0 = log10(max(1, (xs.min() ?? 1) / 1.2)), x1 = log10((xs.max() ?? 100) * 1.2)
        let y0 = log10((ys.min() ?? 1e-4) / 1.5), y1 = log10((ys.max() ?? 1) * 1.5)
        func px(_ x: Double) -> Double { left + (log10(x) - x0) / max(1e-9, x1 - x0) * (w - left - right) }
        func py(_ y: Double) -> Double { h - bottom - (log10(max(y, 1e-5)) - y0) / max(1e-9, y1 - y0) * (h - top - bottom) }
        let palette = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                       "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(w / 2 - 100)" y="24" font-size="15">\(escape(title))</text>
        <line x1="\(left)" y1="\(h - bottom)" x2="\(w - right)" y2="\(h - bottom)" stroke="black"/>
        <line x1="\(left)" y1="\(top)" x2="\(left)" y2="\(h - bottom)" stroke="black"/>
        <text x="\((left + w - right) / 2 - 120)" y="\(h - 15)">effective compression ratio (log scale, all bytes counted)</text>
        <text transform="translate(20,\((top + h - bottom) / 2 + 80)) rotate(-90)">mean KL(exact || decoded), nats (log)</text>

        """
        var e = floor(x0)
        while e <= ceil(x1) {
            for m in [1.0, 2, 5] {
                let v = pow(10, e) * m
                if log10(v) >= x0, log10(v) <= x1 {
                    s += "<line x1=\"\(px(v))\" y1=\"\(top)\" x2=\"\(px(v))\" y2=\"\(h - bottom)\" stroke=\"#eee\"/>"
                    s += "<text x=\"\(px(v) - 8)\" y=\"\(h - bottom + 16)\">\(v >= 1 ? String(Int(v)) : String(v))</text>\n"
                }
            }
            e += 1
        }
        e = floor(y0)
        while e <= ceil(y1) {
            let v = pow(10, e)
            if log10(v) >= y0, log10(v) <= y1 {
                s += "<line x1=\"\(left)\" y1=\"\(py(v))\" x2=\"\(w - right)\" y2=\"\(py(v))\" stroke=\"#eee\"/>"
                s += "<text x=\"\(left - 50)\" y=\"\(py(v) + 4)\">1e\(Int(e))</text>\n"
            }
            e += 1
        }
        for (i, name) in names.enumerated() {
            let color = palette[i % palette.count]
            let pts = groups[name]!.sorted { $0.effective_ratio < $1.effective_ratio }
            let path = pts.map { "\(px($0.effective_ratio)),\(py($0.mean_kl))" }.joined(separator: " ")
            if pts.count > 1 { s += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(path)\"/>\n" }
            for p in pts {
                s += "<circle cx=\"\(px(p.effective_ratio))\" cy=\"\(py(p.mean_kl))\" r=\"4\" fill=\"\(color)\"><title>\(escape(p.method)) \(escape(p.setting)): \(Profile.formatRatio(p.effective_ratio, fractionDigits: 2)), KL \(String(format: "%.4f", p.mean_kl))</title></circle>\n"
            }
            let ly = top + 18 * Double(i)
            s += "<rect x=\"\(w - right + 15)\" y=\"\(ly - 9)\" width=\"12\" height=\"12\" fill=\"\(color)\"/>"
            s += "<text x=\"\(w - right + 32)\" y=\"\(ly + 1)\">\(escape(name))</text>\n"
        }
        for r in references {
            s += "<line x1=\"\(left)\" y1=\"\(py(r.mean_kl))\" x2=\"\(w - right)\" y2=\"\(py(r.mean_kl))\" stroke=\"black\" stroke-dasharray=\"6,4\"/>"
            s += "<text x=\"\(left + 6)\" y=\"\(py(r.mean_kl) - 5)\">\(escape(r.method)): middle dropped (sinks + window only)</text>\n"
        }
        return s + "</svg>\n"
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
