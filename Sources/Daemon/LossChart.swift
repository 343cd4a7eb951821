import Foundation
import MoCo

/// The loss curve (left axis) and kNN accuracy (right axis, points) as a self-contained SVG.
enum LossChart {
    static func svg(title: String, points: [MetricPoint], width: Double = 720, height: Double = 360) -> String {
        let steps = points.filter { $0.kind == .step && ($0.loss ?? .nan).isFinite }
        let evals = points.filter { $0.kind == .eval && $0.knn_top1 != nil }
        let (l, r, t, b) = (60.0, 60.0, 40.0, 40.0)
        let maxStep = Double(max(points.map(\.step).max() ?? 1, 1))
        let losses = steps.compactMap(\.loss)
        let lo = (losses.min() ?? 0), hi = max(losses.max() ?? 1, lo + 1e-6)
        func x(_ s: Int) -> Double { l + (width - l - r) * Double(s) / maxStep }
        func y(_ v: Double) -> Double { t + (height - t - b) * (1 - (v - lo) / (hi - lo)) }
        func yk(_ v: Double) -> Double { t + (height - t - b) * (1 - v / 100) }
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
        }
        var svg = ##"<svg xmlns="http://www.w3.org/2000/svg" width="\##(Int(width))" height="\##(Int(height))" viewBox="0 0 \##(Int(width)) \##(Int(height))" font-family="sans-serif" font-size="12">"##
        svg += ##"<rect width="100%" height="100%" fill="white"/>"##
        svg += ##"<text x="\##(l)" y="22" font-size="14">\##(esc(title)): loss (blue) and kNN top-1 % (orange)</text>"##
        svg += ##"<line x1="\##(l)" y1="\##(height - b)" x2="\##(width - r)" y2="\##(height - b)" stroke="#888"/>"##
        svg += ##"<line x1="\##(l)" y1="\##(t)" x2="\##(l)" y2="\##(height - b)" stroke="#888"/>"##
        svg += ##"<line x1="\##(width - r)" y1="\##(t)" x2="\##(width - r)" y2="\##(height - b)" stroke="#888"/>"##
        for i in 0...4 {
            let v = lo + (hi - lo) * Double(i) / 4
            svg += ##"<text x="\##(l - 6)" y="\##(y(v) + 4)" text-anchor="end">\##(String(format: "%.2f", v))</text>"##
            svg += ##"<text x="\##(width - r + 6)" y="\##(yk(Double(i) * 25) + 4)">\##(i * 25)</text>"##
        }
        svg += ##"<text x="\##(width - r)" y="\##(height - 12)" text-anchor="end">step \##(Int(maxStep))</text>"##
        if !steps.isEmpty {
            let path = steps.map { String(format: "%.1f,%.1f", x($0.step), y($0.loss!)) }.joined(separator: " ")
            svg += ##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="\##(path)"/>"##
        }
        for e in evals {
            svg += ##"<circle cx="\##(String(format: "%.1f", x(e.step)))" cy="\##(String(format: "%.1f", yk(e.knn_top1!)))" r="3.5" fill="#ff7f0e"><title>epoch \##(e.epoch): \##(String(format: "%.2f", e.knn_top1!))%</title></circle>"##
        }
        if steps.isEmpty && evals.isEmpty {
            svg += ##"<text x="\##(width / 2)" y="\##(height / 2)" text-anchor="middle" fill="#888">no metrics yet</text>"##
        }
        return svg + "</svg>\n"
    }
}
