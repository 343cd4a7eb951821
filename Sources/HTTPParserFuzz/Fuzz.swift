import HTTP

/// libFuzzer entry point. Build: MOCOD_FUZZ=1 swift build -c release --sanitize=fuzzer --product HTTPParserFuzz
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEntry(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    fuzzRequestParser(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
