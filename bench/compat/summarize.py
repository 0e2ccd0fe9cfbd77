#!/usr/bin/env python3
"""Summarise the JUnit XML files of a bench/compat.sh run.

    summarize.py RESULTS_DIR

RESULTS_DIR holds <suite>-p<protocol>-<mode>.xml files (mode: direct or cachet), written by
pytest --junitxml (redis-py) or mocha's xunit reporter (ioredis). ioredis runs once per mode
and its tests pick their protocol themselves, so its files are named ioredis-pall-<mode>.xml
and each test is put under a protocol here: RESP2 when its title says "RESP2" or
"protocol 2", else RESP3 (ioredis 6's default). PROTOCOLS (environment, "2 3" by default)
limits the rows printed.

Prints, in Markdown: a table of passed/failed/errors/skipped per suite, protocol and mode
with the ratio of passes cachet/direct, then every test that fails or errors through cachet
and passes directly, then every test that timed out through cachet and not directly.
"""
import collections
import os
import re
import sys
import xml.etree.ElementTree as ET

OUTCOMES = ("passed", "failed", "errors", "skipped")
TIMEOUT_RE = re.compile(r"Timeout \(|Timeout of \d+ms exceeded|timed out after", re.I)


def pytest_id(classname, name):
    # tests.test_asyncio.test_commands.TestRedisCommands -> tests/test_asyncio/test_commands.py::TestRedisCommands
    parts = classname.split(".")
    mod, cls = [], []
    for p in parts:
        (cls if cls or p[:1].isupper() else mod).append(p)
    nodeid = "/".join(mod) + ".py"
    if cls:
        nodeid += "::" + "::".join(cls)
    return nodeid + "::" + name


def mocha_id(tc, root):
    f = tc.get("file") or ""
    if root and f.startswith(root):
        f = f[len(root):].lstrip("/")
    return f"{f} :: {tc.get('classname')} :: {tc.get('name')}"


def outcome(tc):
    kinds = [ch.tag for ch in tc if ch.tag in ("failure", "error", "skipped")]
    if "failure" in kinds:
        return "failed"
    if "error" in kinds:
        return "errors"
    if "skipped" in kinds:
        return "skipped"
    return "passed"


def message(tc):
    for ch in tc:
        if ch.tag in ("failure", "error"):
            text = ch.get("message") or ch.text or ""
            return " ".join(text.split())[:300]
    return ""


def load(path, suite):
    """{protocol: {test id: (outcome, message)}}"""
    out = collections.defaultdict(dict)
    root = ET.parse(path).getroot()
    mocha_root = os.environ.get("IOREDIS_ROOT", "")
    fixed = re.match(r".*-p(\d)-", os.path.basename(path))
    seen = collections.Counter()
    for tc in root.iter("testcase"):
        if suite == "ioredis":
            tid = mocha_id(tc, mocha_root)
            title = f"{tc.get('classname')} {tc.get('name')}"
            proto = "2" if re.search(r"RESP2|protocol:? ?2\b", title) else "3"
        else:
            tid = pytest_id(tc.get("classname", ""), tc.get("name", ""))
            proto = fixed.group(1)
        seen[(proto, tid)] += 1
        if seen[(proto, tid)] > 1:  # same title twice: keep both
            tid += f" #{seen[(proto, tid)]}"
        out[proto][tid] = (outcome(tc), message(tc))
    return out


def main():
    d = sys.argv[1]
    protocols = os.environ.get("PROTOCOLS", "2 3").split()
    suites = os.environ.get("SUITES", "redis-py redis-py-async ioredis").split()
    results = {}  # (suite, proto, mode) -> {id: (outcome, msg)}
    for suite in suites:
        for mode in ("direct", "cachet"):
            files = [f for f in sorted(os.listdir(d))
                     if f.startswith(suite + "-p") and f.endswith(f"-{mode}.xml")]
            for f in files:
                try:
                    per = load(os.path.join(d, f), suite)
                except (ET.ParseError, FileNotFoundError) as e:
                    print(f"<!-- {f}: unreadable ({e}) -->")
                    continue
                for proto, tests in per.items():
                    if proto in protocols:
                        results.setdefault((suite, proto, mode), {}).update(tests)

    print("| suite | protocol | mode | passed | failed | errors | skipped | passed cachet/direct |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for suite in suites:
        for proto in protocols:
            counts = {}
            for mode in ("direct", "cachet"):
                tests = results.get((suite, proto, mode))
                if tests is None:
                    continue
                c = collections.Counter(o for o, _ in tests.values())
                counts[mode] = c
            for mode in ("direct", "cachet"):
                if mode not in counts:
                    continue
                c = counts[mode]
                ratio = ""
                if mode == "cachet" and "direct" in counts and counts["direct"]["passed"]:
                    ratio = f"{c['passed'] / counts['direct']['passed']:.4f}"
                print(f"| {suite} | RESP{proto} | {mode} | "
                      + " | ".join(str(c[o]) for o in OUTCOMES) + f" | {ratio} |")

    print()
    print("### Failures unique to cachet (fail or error through cachet, pass directly)")
    print()
    any_unique = False
    hangs = []
    for suite in suites:
        for proto in protocols:
            direct = results.get((suite, proto, "direct"))
            cachet = results.get((suite, proto, "cachet"))
            if direct is None or cachet is None:
                continue
            unique = []
            for tid, (o, msg) in sorted(cachet.items()):
                d_o, d_msg = direct.get(tid, ("missing", ""))
                if o in ("failed", "errors") and d_o == "passed":
                    unique.append((tid, o, msg))
                if TIMEOUT_RE.search(msg) and not TIMEOUT_RE.search(d_msg):
                    hangs.append((suite, proto, tid, d_o))
            missing = sorted(set(direct) - set(cachet))
            print(f"#### {suite}, RESP{proto}: {len(unique)}")
            print()
            for tid, o, msg in unique:
                any_unique = True
                print(f"- `{tid}` ({o}): {msg}")
            if missing:
                print(f"- ({len(missing)} tests ran directly but not through cachet, e.g. `{missing[0]}`)")
            print()
    if not any_unique:
        print("(none)")
        print()
    print("### Timeouts through cachet and not directly")
    print()
    for suite, proto, tid, d_o in hangs:
        print(f"- {suite} RESP{proto}: `{tid}` (direct: {d_o})")
    if not hangs:
        print("(none)")


if __name__ == "__main__":
    main()
