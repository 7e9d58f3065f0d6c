#!/usr/bin/env python3
"""Fails when test code sleeps a fixed time and then asserts, or asserts on a wall clock.

Why: a fixed sleep before an assert encodes a guess about how fast the machine is, and an
assertion on `elapsed()` is a benchmark dressed as a test; on a loaded 2-core CI runner both
fail now and then for reasons that have nothing to do with the code (issue 17). Tests wait
for the event instead (tests/wait_support: poll a condition until a generous deadline) or
drive virtual time (src/sim). See TESTING.md.

What it checks, in tests/**/*.rs and in the test code of src/ (files named *tests.rs, and
everything after the first `#[cfg(test)]` of other files):
  * a `sleep(`/`sleep_until(` call followed, later in the same function, by an
    `assert!`/`assert_eq!`/`assert_ne!` -> "sleep-then-assert"; a sleep inside a loop only
    when the assert follows it inside that same loop (a loop that probes, checks its
    deadline and then sleeps is an event wait, and its next probe is the check);
  * an assert whose arguments mention `elapsed` -> "wall-clock assertion".
Either is allowed when a comment on the same line or one of the three lines above says why
it is safe: `// sleep-ok: <why>` or `// clock-ok: <why>` respectively.

The scan is lexical (comments and string literals are blanked first, braces are counted), a
deliberate trade: no Rust toolchain dependency, fast enough for every CI run, and the
patterns it looks for are lexical anyway. `--self-test` runs it on the planted cases in
tools/testdata/sleep-guard/ and fails unless every `bad_*.rs` is caught and every
`good_*.rs` passes.

Usage: tools/check-test-sleeps.py [--self-test] [FILE...]   (exit status 1 on findings)
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SLEEP = re.compile(r"\bsleep(?:_until)?\s*\(")
ASSERT = re.compile(r"\b(?:debug_)?assert(?:_eq|_ne)?!\s*[\(\[\{]")
LOOP = re.compile(r"(?:^|[^\w])(?:loop|while|for)\b")
FN = re.compile(r"\bfn\b")
LOOKBACK = 3


def blank(text):
    """Returns (code, comments): `code` is `text` with comments and the contents of string
    and char literals replaced by spaces (newlines kept, so line numbers hold); `comments`
    maps a line number (1-based) to the comment text on it."""
    out = []
    comments = {}
    i, n, line = 0, len(text), 1

    def note(start, end):
        nonlocal line
        seg = text[start:end]
        for k, part in enumerate(seg.split("\n")):
            comments[line + k] = comments.get(line + k, "") + part
        out.append("".join(c if c == "\n" else " " for c in seg))
        line += seg.count("\n")

    def skip(start, end):
        nonlocal line
        seg = text[start:end]
        out.append("".join(c if c == "\n" else " " for c in seg))
        line += seg.count("\n")

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            note(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            note(i, j)
            i = j
        elif (
            c in "br"
            and re.match(r'b?r#*"', text[i:i + 10])
            and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))
        ):
            m = re.match(r'b?r(#*)"', text[i:])
            close = '"' + m.group(1)
            j = text.find(close, i + m.end())
            j = n if j < 0 else j + len(close)
            out.append(text[i:i + m.end()])
            skip(i + m.end(), j)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('"')
            skip(i + 1, min(j, n))
            out.append('"')
            i = j + 1
        elif c == "'":
            m = re.match(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'\n])'", text[i:])
            if m:
                out.append("'")
                skip(i + 1, i + m.end() - 1)
                out.append("'")
                i += m.end()
            else:  # a lifetime or label
                out.append(c)
                i += 1
        else:
            if c == "\n":
                line += 1
            out.append(c)
            i += 1
    return "".join(out), comments


def excused(comments, line, tag):
    return any(tag in comments.get(k, "") for k in range(line - LOOKBACK, line + 1))


def macro_args(code, start):
    """The text of the macro call whose opening bracket is at or after `start`."""
    i = code.find("(", start)
    for b in "([{":
        k = code.find(b, start)
        if k >= 0 and (i < 0 or k < i):
            i = k
    pairs = {"(": ")", "[": "]", "{": "}"}
    open_b, close_b, depth = code[i], pairs[code[i]], 0
    for j in range(i, len(code)):
        if code[j] == open_b:
            depth += 1
        elif code[j] == close_b:
            depth -= 1
            if depth == 0:
                return code[i:j + 1]
    return code[i:]


def test_region_start(path, code):
    """The first line holding test code: 1 for test files, else the first #[cfg(test)]."""
    rel = os.path.relpath(os.path.abspath(path), ROOT)
    name = os.path.basename(path)
    # Only src/ mixes library and test code; anything else given to the checker is a test.
    if not rel.startswith("src" + os.sep) or name.endswith("tests.rs"):
        return 1
    m = re.search(r"#\[cfg\(test\)\]", code)
    if not m:
        return None
    return code.count("\n", 0, m.start()) + 1


def check(path):
    """Findings in one file, as 'path:line: message' strings."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    code, comments = blank(text)
    first = test_region_start(path, code)
    if first is None:
        return []
    findings = []
    path = os.path.relpath(os.path.abspath(path), ROOT)
    # Block stack: (kind, fn_index) with kind in {"fn", "loop", "other"}; every function
    # gets a record of its sleeps and asserts, judged when it closes.
    stack = []
    fns = []  # per function: {"sleeps": [(line, in_loop)], "asserts": [line]}
    header_start = 0
    line = 1

    def current_fn():
        for kind, idx in reversed(stack):
            if kind == "fn":
                return idx
        return None

    def loops():
        """Ids of the loops open inside the current function, innermost first."""
        out = []
        for kind, idx in reversed(stack):
            if kind == "fn":
                break
            if kind == "loop":
                out.append(idx)
        return out

    loop_ids = 0
    i = 0
    n = len(code)
    while i < n:
        c = code[i]
        if c == "\n":
            line += 1
        elif c == "{":
            header = code[header_start:i]
            if FN.search(header):
                fns.append({"sleeps": [], "asserts": []})
                stack.append(("fn", len(fns) - 1))
            elif LOOP.search(header):
                loop_ids += 1
                stack.append(("loop", loop_ids))
            else:
                stack.append(("other", None))
            header_start = i + 1
        elif c == "}":
            if stack:
                kind, idx = stack.pop()
                if kind == "fn":
                    judge(path, fns[idx], comments, first, findings)
            header_start = i + 1
        elif c == ";":
            header_start = i + 1
        else:
            m = SLEEP.match(code, i) if c == "s" else None
            if m and (i == 0 or not (code[i - 1].isalnum() or code[i - 1] == "_")):
                f = current_fn()
                if f is not None:
                    inner = loops()
                    fns[f]["sleeps"].append((line, inner[0] if inner else None))
                i = m.end()
                continue
            m = ASSERT.match(code, i) if c in "ad" else None
            if m and (i == 0 or not (code[i - 1].isalnum() or code[i - 1] == "_")):
                f = current_fn()
                if f is not None:
                    fns[f]["asserts"].append((line, set(loops())))
                args = macro_args(code, i)
                if (
                    re.search(r"\belapsed\b", args)
                    and line >= first
                    and not excused(comments, line, "clock-ok:")
                ):
                    findings.append(
                        f"{path}:{line}: wall-clock assertion (assert on elapsed time); "
                        "wait for the event or benchmark it, or say why it cannot flake "
                        "in a `// clock-ok: ...` comment"
                    )
        i += 1
    return findings


def judge(path, fn, comments, first, findings):
    for line, loop in fn["sleeps"]:
        if line < first or excused(comments, line, "sleep-ok:"):
            continue
        # A sleep outside loops: any later assert in the function. A sleep in a loop is a
        # poll interval unless an assert follows it in the same loop (sleep, then assert
        # what the sleep was meant to let happen).
        later = [a for a, inside in fn["asserts"] if a > line and (loop is None or loop in inside)]
        if loop is None and not later:
            # A fixed sleep in a helper: the caller asserts on what it returns.
            findings.append(
                f"{path}:{line}: fixed sleep outside a polling loop; whoever uses what "
                "follows it asserts on a guess about timing: wait for the event "
                "(tests/wait_support), or say why it is safe in a `// sleep-ok: ...` comment"
            )
        if later:
            findings.append(
                f"{path}:{line}: sleep-then-assert (fixed sleep, then the assert on line "
                f"{later[0]}); poll for the event with a deadline (tests/wait_support), or "
                "say why the sleep is safe in a `// sleep-ok: ...` comment"
            )


def default_files():
    files = []
    for top in ("tests", "src"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            files += [os.path.join(dirpath, x) for x in names if x.endswith(".rs")]
    return sorted(files)


def self_test():
    fixtures = os.path.join(ROOT, "tools", "testdata", "sleep-guard")
    names = sorted(x for x in os.listdir(fixtures) if x.endswith(".rs"))
    bad = [x for x in names if x.startswith("bad_")]
    good = [x for x in names if x.startswith("good_")]
    if not bad or not good:
        print(f"self-test: no bad_*.rs or good_*.rs fixtures in {fixtures}")
        return 1
    failed = 0
    for name in names:
        found = check(os.path.join(fixtures, name))
        want = name.startswith("bad_")
        if bool(found) != want:
            failed += 1
            print(f"self-test FAILED: {name}: expected {'a finding' if want else 'none'}, got {found}")
    print(f"self-test: {len(bad)} planted cases caught, {len(good)} clean cases passed"
          if not failed else f"self-test: {failed} fixture(s) misjudged")
    return 1 if failed else 0


def main(argv):
    if argv[:1] == ["--self-test"]:
        return self_test()
    files = argv or default_files()
    findings = [f for path in files for f in check(path)]
    for f in findings:
        print(f)
    if findings:
        print(f"{len(findings)} timing finding(s) in test code (see TESTING.md)")
        return 1
    print(f"check-test-sleeps: {len(files)} files clean")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
