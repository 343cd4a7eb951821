/// One fuzzing iteration over the request parser, shared by the libFuzzer target and the tests
/// that replay its corpus: the input is fed in two parts (the first byte picks the split), and
/// events are drained with the parser's invariants checked. Traps on a broken invariant.
public func fuzzRequestParser(_ data: [UInt8]) {
    var limits = HTTPLimits()
    limits.maxBodyBytes = 4096
    limits.maxHeaderBytes = 2048
    limits.maxRequestLine = 1024
    var p = RequestParser(limits: limits)
    let split = data.isEmpty ? 0 : Int(data[0]) % (data.count + 1)
    var heads = 0, bodyBytes = 0
    for part in [data[0..<split], data[split...]] {
        p.feed(part)
        var steps = 0
        loop: while true {
            steps += 1
            precondition(steps < 100_000, "parser did not make progress")
            switch p.next() {
            case .needMoreData: break loop
            case .head(let h):
                heads += 1
                precondition(!h.method.isEmpty && (h.target.hasPrefix("/") || h.target == "*"))
                bodyBytes = 0
            case .body(let b):
                bodyBytes += b.count
                precondition(bodyBytes <= limits.maxBodyBytes, "body beyond the limit")
            case .end: break
            case .error(let e):
                precondition(e.status.code >= 400 && e.status.code < 600)
                // A failed parser stays failed.
                precondition(p.next() == .error(e))
                break loop
            }
        }
    }
}
