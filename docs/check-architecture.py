#!/usr/bin/env python3
"""Checks that docs/architecture.md names only code that exists.

Every code-like name the page shows is looked up in Sources/ (test names in Tests/):

- in `backticks`: CamelCase names (types), lowerCamelCase names (members), `Type.member` and
  `value.member` paths (each part), `func()`-style names, and *.swift / *.h / *.md paths;
- in the mermaid block: the states of every transition, which must be cases of
  ConnectionLifecycle.Phase, and every code name on a transition's label (`name()`,
  `Type.member`, lowerCamelCase, CamelCase with two capitals);
- in the file map (the other fenced block): every path, and the code names of each description;
  and every Sources/**/*.swift file must have its line there.

A name exists if Sources/ declares it (`struct|enum|class|protocol|typealias|actor|func|case|
var|let|associatedtype|extension NAME`, an enum case list, or a generic parameter `<NAME:`).
Skipped: all-caps names (EINVAL, F_MORE, MSG_RING), kernel and liburing names (io_*, IORING*,
IOSQE*, IOU*), and the allowlists below. Prints what is missing; exits 1 if anything is.

No dependencies: python3 docs/check-architecture.py (from anywhere) [another.md].
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "architecture.md")

# Names that are not this project's code, or not code at all.
ALLOWED = {
    # IOCP (the design this one ports)
    "CreateIoCompletionPort", "GetQueuedCompletionStatus", "PostQueuedCompletionStatus",
    "OverlappedEx", "AcceptEx", "WSARecv", "WSASend", "DisconnectEx", "TransmitFile", "ConnectEx", "TransmitPackets",
    "CancelIoEx", "IoCount",
    # modules (not declarations) and the library
    "SystemIO", "liburing",
    # system calls, libc and C names
    "connect", "socket", "close", "listen", "accept", "recv", "send", "sendmsg", "malloc",
    "eventfd", "max", "min", "tcp_disconnect", "user_data", "close_direct", "file_index",
    "sqe", "optlen",
    # Swift standard library, swift-log/metrics/service-lifecycle, swift-prometheus
    "Sendable", "Hashable", "Duration", "Substring", "AsyncSequence", "TaskExecutor", "UInt64", "UInt32", "UInt8", "Int32",
    "MetricsFactory", "PrometheusMetricsFactory", "Service", "SwiftNIO",
}

# Spans that are commands or options, not code.
COMMAND_PREFIXES = ("make ", "--", "uring-echo", "python3 ", "swift ", "apt-get ")

KERNEL_PREFIXES = ("io_", "IORING", "IOSQE", "IOU")


def read_sources(folder):
    texts = []
    for base, _, files in os.walk(os.path.join(ROOT, folder)):
        for name in files:
            if name.endswith(".swift"):
                with open(os.path.join(base, name), encoding="utf-8") as f:
                    texts.append(f.read())
    return "\n".join(texts)


SOURCES = read_sources("Sources")
TESTS = read_sources("Tests")
SOURCE_FILES = set()
for base, _, files in os.walk(os.path.join(ROOT, "Sources")):
    for name in files:
        SOURCE_FILES.add(os.path.relpath(os.path.join(base, name), ROOT))
SOURCE_BASENAMES = {os.path.basename(p) for p in SOURCE_FILES}

_declared_cache = {}


def declared(name, text=SOURCES):
    key = (name, id(text))
    if key not in _declared_cache:
        n = re.escape(name)
        patterns = [
            r"\b(?:struct|enum|class|protocol|typealias|actor|func|case|var|let|associatedtype|extension)\s+" + n + r"\b",
            r"\bcase\s+(?:\w+(?:\([^)]*\))?\s*,\s*)+" + n + r"\b",  # case a, b, name
            r"<\s*" + n + r"\s*[:>,]",  # a generic parameter
        ]
        _declared_cache[key] = any(re.search(p, text) for p in patterns)
    return _declared_cache[key]


def is_all_caps(token):
    return re.fullmatch(r"[A-Z0-9_]+", token) is not None and re.search(r"[A-Z]", token) is not None


def skipped(token):
    return (
        token in ALLOWED
        or is_all_caps(token)
        or token.startswith(KERNEL_PREFIXES)
        or token.startswith("__")
    )


def is_camel(token):
    """lowerCamelCase: a capital after a lowercase start (`buffersHeld`, `fallBack`)."""
    return re.fullmatch(r"[a-z][a-z0-9]*[A-Z]\w*", token) is not None


def is_type_name(token):
    return re.fullmatch(r"[A-Z][A-Za-z0-9]*", token) is not None and not is_all_caps(token)


def exists(token):
    """Looks a single name up: test classes and test methods in Tests/, the rest in Sources/."""
    if skipped(token):
        return True
    if token.endswith("Tests") or token.startswith("test"):
        return declared(token, TESTS)
    return declared(token)


def check_path(path):
    path = path.rstrip("/")
    if os.path.exists(os.path.join(ROOT, path)) or os.path.exists(os.path.join(ROOT, "Sources", path)):
        return True
    if "/" not in path:
        # `EchoServer/RequestKind.swift`, `PendingRequests.swift`: a file named without its folder.
        return path in SOURCE_BASENAMES or os.path.exists(os.path.join(ROOT, "docs", path))
    return False


PATH_RE = re.compile(r"[\w+./-]+\.(?:swift|h|md|py|json|modulemap)\b")
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def names_in_code(text, strict_types):
    """The code names in `text`: ("path", p) and ("name", n) pairs to look up.

    strict_types: every capitalised identifier is a type name (inside backticks); otherwise only
    CamelCase with two capitals is taken for code (prose in the mermaid block and the file map).
    """
    found = []
    # Paths first, and out of the way.
    for p in PATH_RE.findall(text):
        found.append(("path", p))
    text = PATH_RE.sub(" ", text)
    # Man-page references: socket(2).
    text = re.sub(r"\b\w+\(\d\)", " ", text)
    # Dotted paths and calls: Type.member, value.member(label:), name(), Name(args). Each part of
    # the path must exist; in the arguments, labels are skipped and only camelCase is code.
    call_re = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\(([^)]*)\)|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
    for m in call_re.finditer(text):
        chain = m.group(1) or m.group(0)
        for part in chain.split("."):
            found.append(("name", part))
        arguments = re.sub(r"\b\w+\s*:", " ", m.group(2) or "")
        found.extend(n for n in names_in_code(arguments, strict_types=False) if n[0] == "name")
    text = call_re.sub(" ", text)
    for token in IDENT_RE.findall(text):
        if is_camel(token):
            found.append(("name", token))
        elif is_type_name(token):
            if strict_types or re.fullmatch(r"[A-Z][a-z0-9]+[A-Z]\w*", token):
                found.append(("name", token))
    return found


def main():
    doc_path = sys.argv[1] if len(sys.argv) > 1 else DOC  # another file, to test the checker
    with open(doc_path, encoding="utf-8") as f:
        doc = f.read()

    missing = []  # (line, what)

    def check(kind, value, line):
        ok = check_path(value) if kind == "path" else exists(value)
        if not ok:
            missing.append((line, value))

    phase_block = re.search(r"enum Phase\b[^{]*\{(.*?)\}", SOURCES, re.S)
    phases = set(re.findall(r"\bcase\s+(\w+)", phase_block.group(1))) if phase_block else set()
    if not phases:
        missing.append((0, "ConnectionLifecycle.Phase (its cases could not be read)"))

    lines = doc.split("\n")
    in_fence = None  # None, "mermaid" or "other"
    file_map_dir = None
    mapped = set()
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^```(\w*)", line)
        if fence:
            if in_fence is None:
                in_fence = "mermaid" if fence.group(1) == "mermaid" else "other"
                file_map_dir = None
            else:
                in_fence = None
            continue
        if in_fence == "mermaid":
            t = re.match(r"^\s*(\S+)\s*-->\s*([^:\s]+)\s*(?::(.*))?$", line)
            if not t:
                continue
            for state in (t.group(1), t.group(2)):
                if state != "[*]" and state not in phases:
                    missing.append((number, f"{state} (not a case of ConnectionLifecycle.Phase)"))
            label = (t.group(3) or "").replace("<br/>", " ")
            for kind, value in names_in_code(label, strict_types=False):
                check(kind, value, number)
            continue
        if in_fence == "other":
            # The file map: `Sources/X/` headings, then indented `File.swift   description`.
            heading = re.match(r"^(Sources/[^\s]+/)\s*$", line)
            if heading:
                file_map_dir = heading.group(1)
                if not os.path.isdir(os.path.join(ROOT, file_map_dir)):
                    missing.append((number, file_map_dir))
                continue
            entry = re.match(r"^  (\S+)\s+(.*)$", line)
            if entry and file_map_dir:
                path = file_map_dir + entry.group(1)
                mapped.add(path)
                if not os.path.exists(os.path.join(ROOT, path)):
                    missing.append((number, path))
                description = entry.group(2)
            else:
                description = line
            for kind, value in names_in_code(description, strict_types=False):
                check(kind, value, number)
            continue
        if line.count("`") % 2:
            # A code span broken over two lines would pair the wrong backticks: keep each on one.
            missing.append((number, "an odd number of backticks (a code span split across lines?)"))
        for span in re.findall(r"`([^`]+)`", line):
            span = span.strip()
            if span.startswith(COMMAND_PREFIXES) or (span.startswith("<") and span.endswith(">")):
                continue
            for kind, value in names_in_code(span, strict_types=True):
                check(kind, value, number)

    for path in sorted(SOURCE_FILES):
        if path.endswith(".swift") and path not in mapped:
            missing.append((0, f"{path} (no line in the file map)"))

    if missing:
        print(f"{os.path.relpath(doc_path, ROOT)} names {len(missing)} thing(s) that do not exist:")
        for number, what in missing:
            print(f"  line {number}: {what}" if number else f"  {what}")
        return 1
    print(f"{os.path.relpath(doc_path, ROOT)}: every code name it shows exists")
    return 0


if __name__ == "__main__":
    sys.exit(main())
