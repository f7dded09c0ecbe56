import Synchronization

// Reading HTTP/1.1 request heads: where a head ends, and what it asks.
extension MetricsHTTPHandler {
    #if DEBUG
    /// Bytes ``headEnd(_:from:)`` has examined, over every handler of the process (debug builds):
    /// how tests see that a head arriving in pieces is searched once.
    package static let headBytesExamined = Atomic<Int>(0)
    #endif

    /// Where a request head that starts at `start` ends, blank lines before it skipped (as
    /// ``serve(_:_:)`` skips them), searching from `from`: nil while it is not whole.
    static func requestEnd(_ input: [UInt8], start: Int, from: Int) -> Int? {
        headEnd(input, from: max(skippingBlankLines(input, from: start), from)).map(\.next)
    }

    /// Where the request line after `start` begins: RFC 9112 §2.2, empty lines before a request
    /// line are ignored.
    static func skippingBlankLines(_ input: [UInt8], from start: Int) -> Int {
        var first = start
        while first < input.count && (input[first] == UInt8(ascii: "\r") || input[first] == UInt8(ascii: "\n")) { first += 1 }
        return first
    }

    struct Request {
        var method: String
        var path: Substring
        var http10: Bool
        var keepAlive: Bool
        var contentLength: Int
    }

    /// Where the head that starts at `start` ends (the blank line; CRLF or bare LF line ends) and
    /// the body starts.
    static func headEnd(_ input: [UInt8], from start: Int) -> (head: Int, next: Int)? {
        #if DEBUG
        headBytesExamined.add(max(input.count - start, 0), ordering: .relaxed)
        #endif
        var i = start
        while i < input.count, let newline = input[i...].firstIndex(of: UInt8(ascii: "\n")) {
            if newline + 1 < input.count && input[newline + 1] == UInt8(ascii: "\n") { return (newline + 1, newline + 2) }
            if newline + 2 < input.count && input[newline + 1] == UInt8(ascii: "\r") && input[newline + 2] == UInt8(ascii: "\n") {
                return (newline + 1, newline + 3)
            }
            i = newline + 1
        }
        return nil
    }

    /// Parses a request head (without its blank line). Failure: the status to answer.
    static func parse(_ head: [UInt8], maxBody: Int) -> Result<Request, ParseFailure> {
        // Line by line as bytes: as Characters, "\r\n" is one grapheme and would not split on "\n".
        var lines: [Substring] = []
        for raw in head.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            let line = raw.last == UInt8(ascii: "\r") ? raw.dropLast() : raw[...]
            guard !line.contains(UInt8(ascii: "\r")), let text = String(validating: line, as: UTF8.self) else {
                return .failure("400 Bad Request")
            }
            lines.append(text[...])
        }
        if lines.last?.isEmpty == true { lines.removeLast() }
        guard let requestLine = lines.first else { return .failure("400 Bad Request") }
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy(isTokenCharacter),
            !parts[1].isEmpty, !parts[1].contains(where: { $0.isWhitespace })
        else { return .failure("400 Bad Request") }
        var target = parts[1]
        // Absolute form (RFC 9112 §3.2.2): the path after the authority.
        for scheme in ["http://", "https://"] where target.lowercased().hasPrefix(scheme) {
            let rest = target.dropFirst(scheme.count)
            target = rest.firstIndex(of: "/").map { rest[$0...] } ?? "/"
        }
        guard target.first == "/" || target == "*" else { return .failure("400 Bad Request") }
        let version = parts[2]
        guard version.hasPrefix("HTTP/"), version.count == 8 else { return .failure("400 Bad Request") }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else { return .failure("505 HTTP Version Not Supported") }
        let http10 = version == "HTTP/1.0"
        var keepAlive = !http10
        var contentLength: Int? = nil
        var hosts = 0
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { return .failure("400 Bad Request") }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingSpaces
            guard !name.isEmpty, name.allSatisfy(isTokenCharacter) else { return .failure("400 Bad Request") }
            switch name {
            case "host": hosts += 1
            case "connection":
                let tokens = value.lowercased().split(separator: ",").map { $0.trimmingSpaces }
                if tokens.contains("close") { keepAlive = false } else if tokens.contains("keep-alive") { keepAlive = true }
            case "content-length":
                guard !value.isEmpty, value.allSatisfy(\.isASCII), value.allSatisfy(\.isNumber), value.count <= 12,
                    let n = Int(value), contentLength == nil || contentLength == n
                else { return .failure("400 Bad Request") }
                guard n <= maxBody else { return .failure("413 Content Too Large") }
                contentLength = n
            case "transfer-encoding":
                return .failure("501 Not Implemented")
            default: break
            }
        }
        // HTTP/1.1 requires exactly one Host (RFC 9112 §3.2).
        if hosts > 1 || (!http10 && hosts == 0) { return .failure("400 Bad Request") }
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        return .success(
            Request(method: String(parts[0]), path: path, http10: http10, keepAlive: keepAlive, contentLength: contentLength ?? 0))
    }

    struct ParseFailure: Error, ExpressibleByStringLiteral {
        let status: String
        init(stringLiteral status: String) { self.status = status }
    }

    static func isTokenCharacter(_ c: Character) -> Bool {
        guard c.isASCII, let v = c.asciiValue, v > 32, v < 127 else { return false }
        return !"()<>@,;:\\\"/[]?={}".contains(c)
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var s = self
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return s
    }
}
