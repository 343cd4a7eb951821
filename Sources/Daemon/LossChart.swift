import Foundation
import MoCo

/// The training curves as one self-contained SVG, readable at 720×360: the loss raw (light) and
/// smoothed (dark) on the left axis, the loss at chance (ln(K+1) for MoCo) as a dashed line,
/// kNN top-1 as points on the right axis, with ticks and labels on both axes, a grid and a
/// legend. A pure function of the points.
enum LossChart {
    static func svg(title: String, points: [MetricPoint], width: Double = 720, height: Double = 360) -> String {
        let steps = points.filter { $0.kind == .step && ($0.loss ?? .nan).isFinite }
        let evals = points.filter { $0.kind == .eval && $0.knn_top1 != nil }
        let chance = steps.last(where: { $0.loss_at_chance != nil })?.loss_at_chance
        let (l, r, t, b) = (58.0, 52.0, 56.0, 44.0)
        let maxStep = Double(max(points.map(\.step).max() ?? 1, 1))
        let losses = steps.compactMap(\.loss)
        let smooth = smoothed(losses)
        var lo = losses.min() ?? 0, hi = losses.max() ?? 1
        if let chance { lo = min(lo, chance); hi = max(hi, chance) }
        if hi - lo < 1e-6 { lo -= 0.5; hi += 0.5 }
        let yTicks = ticks(lo, hi, count: 5)
        lo = min(lo, yTicks.first ?? lo); hi = max(hi, yTicks.last ?? hi)
        let xTicks = ticks(0, maxStep, count: 6, minSpacing: 1).filter { $0 <= maxStep }
        let (pw, ph) = (width - l - r, height - t - b)
        func x(_ s: Double) -> Double { l + pw * s / maxStep }
        func y(_ v: Double) -> Double { t + ph * (1 - (v - lo) / (hi - lo)) }
        func yk(_ v: Double) -> Double { t + ph * (1 - v / 100) }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }

        var s = ##"<svg xmlns="http://www.w3.org/2000/svg" width="\##(Int(width))" height="\##(Int(height))" viewBox="0 0 \##(Int(width)) \##(Int(height))" font-family="sans-serif" font-size="11">"##
        s += ##"<rect width="100%" height="100%" fill="white"/>"##
        s += ##"<text x="\##(l)" y="18" font-size="14" font-weight="bold">\##(escape(title))</text>"##
        // Legend, one row above the plot.
        var lx = l
        func legend(_ label: String, _ swatch: String) {
            s += ##"<g transform="translate(\##(f(lx)),34)">\##(swatch)<text x="22" y="4">\##(label)</text></g>"##
            lx += 30 + Double(label.count) * 6.2
        }
        legend("loss", ##"<line x1="0" y1="0" x2="18" y2="0" stroke="#aec7e8" stroke-width="1.5"/>"##)
        legend("loss, smoothed", ##"<line x1="0" y1="0" x2="18" y2="0" stroke="#1f77b4" stroke-width="2"/>"##)
        if let chance {
            legend("at chance (\(String(format: "%.2f", chance)))", ##"<line x1="0" y1="0" x2="18" y2="0" stroke="#d62728" stroke-width="1.5" stroke-dasharray="4 3"/>"##)
        }
        legend("kNN top-1 % (right)", ##"<circle cx="9" cy="0" r="3.5" fill="#ff7f0e"/>"##)
        // Grid, axes, ticks and labels.
        s += ##"<g stroke="#e5e5e5">"##
        for v in yTicks { s += ##"<line x1="\##(l)" y1="\##(f(y(v)))" x2="\##(width - r)" y2="\##(f(y(v)))"/>"## }
        for v in xTicks { s += ##"<line x1="\##(f(x(v)))" y1="\##(t)" x2="\##(f(x(v)))" y2="\##(height - b)"/>"## }
        s += "</g>"
        s += ##"<g stroke="#666"><line x1="\##(l)" y1="\##(height - b)" x2="\##(width - r)" y2="\##(height - b)"/><line x1="\##(l)" y1="\##(t)" x2="\##(l)" y2="\##(height - b)"/><line x1="\##(width - r)" y1="\##(t)" x2="\##(width - r)" y2="\##(height - b)"/></g>"##
        for v in yTicks {
            s += ##"<line x1="\##(l - 4)" y1="\##(f(y(v)))" x2="\##(l)" y2="\##(f(y(v)))" stroke="#666"/>"##
            s += ##"<text x="\##(l - 7)" y="\##(f(y(v) + 4))" text-anchor="end">\##(label(v, spacing: yTicks.count > 1 ? yTicks[1] - yTicks[0] : 1))</text>"##
        }
        for k in stride(from: 0.0, through: 100, by: 20) {
            s += ##"<line x1="\##(width - r)" y1="\##(f(yk(k)))" x2="\##(width - r + 4)" y2="\##(f(yk(k)))" stroke="#666"/>"##
            s += ##"<text x="\##(width - r + 7)" y="\##(f(yk(k) + 4))">\##(Int(k))</text>"##
        }
        for v in xTicks {
            s += ##"<line x1="\##(f(x(v)))" y1="\##(height - b)" x2="\##(f(x(v)))" y2="\##(height - b + 4)" stroke="#666"/>"##
            s += ##"<text x="\##(f(x(v)))" y="\##(height - b + 16)" text-anchor="middle">\##(label(v, spacing: 1))</text>"##
        }
        s += ##"<text x="\##(l + pw / 2)" y="\##(height - 6)" text-anchor="middle">step</text>"##
        s += ##"<text transform="translate(14,\##(f(t + ph / 2))) rotate(-90)" text-anchor="middle">loss</text>"##
        s += ##"<text transform="translate(\##(f(width - 12)),\##(f(t + ph / 2))) rotate(90)" text-anchor="middle">kNN top-1 %</text>"##
        // The data.
        if let chance {
            s += ##"<line class="chance" x1="\##(l)" y1="\##(f(y(chance)))" x2="\##(width - r)" y2="\##(f(y(chance)))" stroke="#d62728" stroke-width="1.5" stroke-dasharray="4 3"/>"##
        }
        if !steps.isEmpty {
            let raw = zip(steps, losses).map { "\(f(x(Double($0.step)))),\(f(y($1)))" }.joined(separator: " ")
            let sm = zip(steps, smooth).map { "\(f(x(Double($0.step)))),\(f(y($1)))" }.joined(separator: " ")
            s += ##"<polyline class="raw" fill="none" stroke="#aec7e8" stroke-width="1" points="\##(raw)"/>"##
            s += ##"<polyline class="smoothed" fill="none" stroke="#1f77b4" stroke-width="2" points="\##(sm)"/>"##
        }
        for e in evals {
            s += ##"<circle cx="\##(f(x(Double(e.step))))" cy="\##(f(yk(e.knn_top1!)))" r="3.5" fill="#ff7f0e"><title>epoch \##(e.epoch): \##(String(format: "%.2f", e.knn_top1!))%</title></circle>"##
        }
        if steps.isEmpty && evals.isEmpty {
            s += ##"<text x="\##(l + pw / 2)" y="\##(t + ph / 2)" text-anchor="middle" fill="#888">no metrics yet</text>"##
        }
        return s + "</svg>\n"
    }

    /// An exponential moving average whose weight is fitted to the curve's length (about 2 % of
    /// the points), started from the first value so it does not dip toward zero.
    static func smoothed(_ values: [Double]) -> [Double] {
        guard let first = values.first else { return [] }
        let alpha = min(1, 2 / (max(Double(values.count) * 0.02, 1) + 1))
        var out: [Double] = []
        out.reserveCapacity(values.count)
        var m = first
        for v in values { m += alpha * (v - m); out.append(m) }
        return out
    }

    /// "Nice" tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi] in about `count` steps.
    static func ticks(_ lo: Double, _ hi: Double, count: Int, minSpacing: Double = 0) -> [Double] {
        guard hi > lo, count > 0 else { return [lo] }
        let raw = (hi - lo) / Double(count)
        let mag = pow(10, floor(log10(raw)))
        let step = max(minSpacing, [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag)
        let first = floor(lo / step) * step, last = ceil(hi / step) * step
        return stride(from: first, through: last + step * 1e-9, by: step).map { ($0 / step).rounded() * step }
    }

    /// A tick's label, with as many decimals as the ticks' spacing needs.
    static func label(_ v: Double, spacing: Double) -> String {
        let decimals = spacing > 0 ? max(0, min(6, Int(-floor(log10(spacing) + 1e-9)))) : 0
        return String(format: "%.\(decimals)f", v)
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
            .replacingOccurrences(of: "\"", with: "&quot;")
    }
}
