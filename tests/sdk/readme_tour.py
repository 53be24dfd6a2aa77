#!/usr/bin/env python3
"""Run the README's sh blocks against a live service and check every documented answer.

Usage: readme_tour.py <README.md> <base-url>   (scripts/readme-tour.sh starts the service)

Every ```sh block of the README runs, in document order, in one bash session (variables such
as B, C, T carry over from command to command and from block to block), with
`http://127.0.0.1:8080` replaced by <base-url>. A block is skipped when the line before its
opening fence is `<!-- readme-tour: not run: <reason> -->`.

A command (one logical shell command: continued by an open quote, a trailing backslash, `|`,
`&&` or `||`) that calls curl must document its answer, either at the end of its last line or
on the line right after it:

    # → <status> [<code>][, <check>]...[ — <note>]

  <status>            HTTP status of the command's first curl call (the one checked)
  <code>              the problem document's `code`
  "field": <JSON>     a member of the JSON answer equal to <JSON> (strict: 1 and 1.0 differ);
                      a plain name is looked up at the top level, else anywhere in the answer;
                      a path such as "tasks[0].state" is exact; `…` (or ...) means any value
                      but null
  <n> <name>          the top-level array member <name> (or <name>s: `1 item`, `0 tasks`) has
                      n elements
  Header-Name: value  a response header (name case-insensitive, value exact)
  contains "text"     the answer's body contains text
  events: <name> [<n>], ...   (last) the SSE events that arrived, in order: the event name
                      and, when given, its id (or the revision in its data when it has no id)
  — <note>            free text for people, ignored

`# → not run: <reason>` skips a command. Further curl calls of the same command must answer
below 400. A command must exit 0 (28 is accepted when it sets curl's --max-time: a stream cut
off on purpose). Commands without curl (assignments) need no comment. Standard library only.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

ARROW = "→"
README_BASE = "http://127.0.0.1:8080"
ANY = object()  # `…`: any value but null
SKIP_BLOCK = re.compile(r"^<!--\s*readme-tour:\s*not run:\s*(.+?)\s*-->\s*$")


class Command:
    def __init__(self, text, line):
        self.text = text  # the shell text as written (comments included)
        self.line = line  # 1-based line of its first line in the README
        self.expect = None  # text after the arrow, or None
        self.expect_line = None
        self.uses_curl = False


def scan_line(line, state):
    """Split one line into (code, comment) given the quote state carried from earlier lines.

    state: dict with 'q' (None, "'" or '"'). Returns (code, comment or None)."""
    i = 0
    n = len(line)
    while i < n:
        ch = line[i]
        q = state["q"]
        if q == "'":
            if ch == "'":
                state["q"] = None
        elif q == '"':
            if ch == "\\":
                i += 1
            elif ch == '"':
                state["q"] = None
        else:
            if ch == "\\":
                i += 1
            elif ch in "'\"":
                state["q"] = ch
            elif ch == "#" and (i == 0 or line[i - 1] in " \t;"):
                return line[:i], line[i + 1 :]
        i += 1
    return line, None


def parse_block(lines, first_line_no):
    """Commands of one sh block, each with its expectation."""
    commands = []
    cur = None  # command being accumulated
    state = {"q": None}
    last = None  # last complete command (for a following `# →` line)
    for k, line in enumerate(lines):
        no = first_line_no + k
        code, comment = scan_line(line, state)
        if cur is None and not code.strip():
            # a blank line or a comment-only line between commands
            if comment is not None and comment.strip().startswith(ARROW):
                if last is None or last.expect is not None:
                    raise SystemExit(f"README:{no}: `# {ARROW}` without a command right before it")
                last.expect = comment.strip()[len(ARROW) :].strip()
                last.expect_line = no
            else:
                last = None  # `# →` belongs to the command right above it only
            continue
        if cur is None:
            cur = Command(line, no)
        else:
            cur.text += "\n" + line
        if re.search(r"(^|[\s;|&(`])curl(\s|$)", code):
            cur.uses_curl = True
        stripped = code.rstrip()
        continued = state["q"] is not None or stripped.endswith(("\\", "|", "&&", "||"))
        if continued:
            continue
        if comment is not None and comment.strip().startswith(ARROW):
            cur.expect = comment.strip()[len(ARROW) :].strip()
            cur.expect_line = no
        commands.append(cur)
        last = cur
        cur = None
    if cur is not None:
        raise SystemExit(f"README:{cur.line}: command not finished at the end of its block")
    return commands


def parse_readme(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks = []  # (first line no, commands) ; skipped: (line, reason)
    skipped = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang = m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if lang == "sh":
            prev = lines[i - 1] if i > 0 else ""
            sm = SKIP_BLOCK.match(prev)
            if sm:
                skipped.append((i + 1, sm.group(1)))
            else:
                blocks.append((i + 1, parse_block(lines[i + 1 : j], i + 2)))
        i = j + 1
    return blocks, skipped


# ---- expectations -------------------------------------------------------------------------


def split_top(text, sep=","):
    """Split at sep outside quotes and brackets."""
    parts, depth, q, buf = [], 0, None, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if q:
            if ch == "\\":
                buf += ch + (text[i + 1] if i + 1 < len(text) else "")
                i += 2
                continue
            if ch == q:
                q = None
        elif ch == '"':
            q = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(buf.strip())
            buf = ""
            i += 1
            continue
        buf += ch
        i += 1
    if buf.strip():
        parts.append(buf.strip())
    return parts


def cut_note(text):
    """Drop a ` — note` outside quotes."""
    q = None
    for i, ch in enumerate(text):
        if q:
            if ch == q:
                q = None
        elif ch == '"':
            q = ch
        elif text.startswith(" — ", i):
            return text[:i].rstrip()
    return text


def parse_expect(text):
    text = cut_note(text)
    if text.startswith("not run:"):
        return {"skip": text[len("not run:") :].strip()}
    events = None
    m = re.search(r"(^|,\s*)events:(.*)$", text)
    if m:
        events = [e.strip() for e in m.group(2).split(",") if e.strip()]
        text = text[: m.start()]
    parts = split_top(text)
    if not parts:
        raise ValueError("no status")
    m = re.match(r"^(\d{3})(?:\s+([a-z_]+))?$", parts[0])
    if not m:
        raise ValueError(f"`{parts[0]}` is not `<status> [<code>]`")
    exp = {"status": int(m.group(1)), "code": m.group(2), "checks": [], "events": events}
    for p in parts[1:]:
        mf = re.match(r'^"([^"]+)"\s*:\s*(.+)$', p)
        mc = re.match(r"^(\d+)\s+([a-z_]+)$", p)
        mh = re.match(r"^([A-Za-z][A-Za-z0-9-]*):\s*(.*)$", p)
        mt = re.match(r'^contains\s+(".*")$', p)
        if mf:
            raw = mf.group(2).strip()
            if raw in ("…", "..."):
                exp["checks"].append(("field", mf.group(1), ANY, raw))
            else:
                exp["checks"].append(("field", mf.group(1), json.loads(raw), raw))
        elif mc:
            exp["checks"].append(("count", mc.group(2), int(mc.group(1)), p))
        elif mt:
            exp["checks"].append(("contains", json.loads(mt.group(1)), None, p))
        elif mh:
            exp["checks"].append(("header", mh.group(1).lower(), mh.group(2).strip(), p))
        else:
            raise ValueError(f"cannot read the check `{p}`")
    return exp


def same(a, b):
    """JSON equality that tells 1 from 1.0 and true from 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def path_get(doc, path):
    cur = doc
    for tok in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if tok.startswith("["):
            idx = int(tok[1:-1])
            if not isinstance(cur, list) or idx >= len(cur):
                return False, None
            cur = cur[idx]
        else:
            if not isinstance(cur, dict) or tok not in cur:
                return False, None
            cur = cur[tok]
    return True, cur


def find_all(doc, name):
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == name:
                out.append(v)
            out.extend(find_all(v, name))
    elif isinstance(doc, list):
        for v in doc:
            out.extend(find_all(v, name))
    return out


def value_ok(want, got):
    return got is not None if want is ANY else same(want, got)


def check_field(doc, name, want):
    """None when fine, else a message."""
    if re.search(r"[.\[]", name):
        found, got = path_get(doc, name)
        if not found:
            return f'"{name}" is missing'
        return None if value_ok(want, got) else f'"{name}" is {json.dumps(got)}'
    if isinstance(doc, dict) and name in doc:
        got = doc[name]
        return None if value_ok(want, got) else f'"{name}" is {json.dumps(got)}'
    found = find_all(doc, name)
    if not found:
        return f'"{name}" is missing'
    if any(value_ok(want, g) for g in found):
        return None
    return f'"{name}" is ' + " / ".join(json.dumps(g) for g in found)


def parse_sse(body):
    events = []
    for chunk in re.split(r"\r?\n\r?\n", body):
        if not chunk.strip():
            continue
        ev = {"event": "message", "id": None, "data": ""}
        for ln in chunk.splitlines():
            if ln.startswith(":"):
                continue
            k, _, v = ln.partition(":")
            v = v.removeprefix(" ")
            if k == "event":
                ev["event"] = v
            elif k == "id":
                ev["id"] = v
            elif k == "data":
                ev["data"] += v
        n = ev["id"]
        if n is None:
            try:
                n = json.loads(ev["data"]).get("revision")
            except (ValueError, AttributeError):
                n = None
        ev["n"] = None if n is None else str(n)
        events.append(ev)
    return events


def read_text(path):
    """A file's text, or "" when it does not exist."""
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def read_call(d, n):
    hdr_path = os.path.join(d, f"call.{n}.hdr")
    out_path = os.path.join(d, f"call.{n}.out")
    hdr = read_text(hdr_path)
    body = read_text(out_path)
    status, headers = None, {}
    for block in re.split(r"\r?\n\r?\n", hdr):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("HTTP/"):
            status = int(lines[0].split()[1])
            headers = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                headers[k.strip().lower()] = v.strip()
    # curl -i puts the headers in front of the body too
    while body.startswith("HTTP/"):
        m = re.search(r"\r?\n\r?\n", body)
        body = body[m.end() :] if m else ""
    return status, headers, body


def check_call(exp, status, headers, body):
    errors = []
    if status != exp["status"]:
        errors.append(f"status {status}, expected {exp['status']}")
    doc, is_json = None, False
    try:
        doc = json.loads(body)
        is_json = True
    except ValueError:
        pass
    if exp["code"]:
        got = doc.get("code") if isinstance(doc, dict) else None
        if got != exp["code"]:
            errors.append(f"code {got!r}, expected {exp['code']!r}")
    for kind, a, b, raw in exp["checks"]:
        if kind == "field":
            if not is_json:
                errors.append(f"{raw}: the answer is not JSON")
                continue
            msg = check_field(doc, a, b)
            if msg:
                errors.append(f'expected "{a}": {raw}, but {msg}')
        elif kind == "count":
            arr = None
            if isinstance(doc, dict):
                for name in (a, a + "s"):
                    if isinstance(doc.get(name), list):
                        arr = doc[name]
                        break
            if arr is None:
                errors.append(f"{raw}: no array `{a}` in the answer")
            elif len(arr) != b:
                errors.append(f"{raw}: it has {len(arr)}")
        elif kind == "header":
            got = headers.get(a)
            if got != b:
                errors.append(f"header {a}: {got!r}, expected {b!r}")
        elif kind == "contains" and a not in body:
            errors.append(f"the answer does not contain {a!r}")
    if exp["events"] is not None:
        got = [e["event"] + ("" if e["n"] is None else " " + e["n"]) for e in parse_sse(body)]
        want = exp["events"]
        ok = len(got) == len(want)
        if ok:
            for g, w in zip(got, want):
                if " " in w:
                    ok = ok and g == w
                else:
                    ok = ok and g.split(" ")[0] == w
        if not ok:
            errors.append(f"events: {', '.join(got) or '(none)'}; expected {', '.join(want)}")
    return errors


# ---- running ------------------------------------------------------------------------------

PRELUDE = r"""
set +e
__n=0
echo 0 > "$__d/counter"
curl() {
  local n
  n=$(( $(cat "$__d/counter") + 1 ))
  echo "$n" > "$__d/counter"
  echo "$__n" > "$__d/call.$n.cmd"
  local extra=()
  case " $* " in *" --max-time "*|*" -m "*) ;; *) extra=(--max-time 40) ;; esac
  command curl "${extra[@]}" -D "$__d/call.$n.hdr" "$@" | tee "$__d/call.$n.out"
  return "${PIPESTATUS[0]}"
}
"""


def main():
    readme, base = sys.argv[1], sys.argv[2].rstrip("/")
    blocks, skipped = parse_readme(readme)
    commands = [c for _, cmds in blocks for c in cmds]
    problems = []
    for c in commands:
        if c.uses_curl and c.expect is None:
            problems.append(f"README:{c.line}: curl without `# {ARROW} …` (its documented answer)")
        if c.expect is not None:
            try:
                c.exp = parse_expect(c.expect)
            except (ValueError, json.JSONDecodeError) as e:
                problems.append(f"README:{c.expect_line}: cannot read `# {ARROW} {c.expect}`: {e}")
                c.exp = None
            if not c.uses_curl and c.exp and "skip" not in c.exp:
                problems.append(f"README:{c.expect_line}: an expected answer on a command without curl")
        else:
            c.exp = None
    if problems:
        print("\n".join(problems))
        return 1

    d = tempfile.mkdtemp(prefix="readme-tour.")
    script = [PRELUDE]
    for i, c in enumerate(commands):
        if c.exp and "skip" in c.exp:
            continue
        text = c.text.replace(README_BASE, base)
        script.append(f'__n={i}\n{{ {text}\n}} >"$__d/cmd.{i}.out" 2>&1\necho $? >"$__d/cmd.{i}.rc"\n')
    env = dict(os.environ, __d=d)
    t0 = time.monotonic()
    subprocess.run(["bash", "-c", "\n".join(script)], env=env, cwd=d, check=False)
    took = time.monotonic() - t0

    calls = {}
    for name in os.listdir(d):
        m = re.match(r"^call\.(\d+)\.cmd$", name)
        if m:
            idx = int(read_text(os.path.join(d, name)).strip())
            calls.setdefault(idx, []).append(int(m.group(1)))
    failed = 0
    checked = 0
    for i, c in enumerate(commands):
        first = c.text.split("\n")[0]
        if c.exp and "skip" in c.exp:
            print(f"  skip README:{c.line}: {first[:90]}  ({c.exp['skip']})")
            continue
        errors = []
        rc_path = os.path.join(d, f"cmd.{i}.rc")
        rc = int(read_text(rc_path).strip()) if os.path.exists(rc_path) else None
        timed = re.search(r"(\s--max-time\s|\s-m\s)", " " + c.text + " ")
        if rc != 0 and not (rc == 28 and timed):
            errors.append(f"exit status {rc}")
        mine = sorted(calls.get(i, []))
        if c.uses_curl and not mine:
            errors.append("no curl call ran")
        if c.exp and mine:
            status, headers, body = read_call(d, mine[0])
            errors += check_call(c.exp, status, headers, body)
            for n in mine[1:]:
                st, _, _ = read_call(d, n)
                if st is None or st >= 400:
                    errors.append(f"a further curl call of the command answered {st}")
            checked += 1
        if errors:
            failed += 1
            print(f"FAIL README:{c.line}: {first}")
            for e in errors:
                print(f"       {e}")
            out = read_text(os.path.join(d, f"cmd.{i}.out"))
            if mine:
                _, _, body = read_call(d, mine[0])
                out = out if out.strip() else body
            print("       output: " + (out.strip()[:1500] or "(none)").replace("\n", "\n               "))
        else:
            print(f"  ok   README:{c.line}: {first[:100]}")
    for line, reason in skipped:
        print(f"  skip README:{line}: sh block not run: {reason}")
    print(
        f">> README tour: {checked} answers checked in {len(commands)} commands of {len(blocks)} blocks "
        f"({len(skipped)} blocks not run), {failed} failed, {took:.1f} s"
    )
    if failed == 0:
        subprocess.run(["rm", "-rf", d], check=False)
    else:
        print(f"   (files of the run kept in {d})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
