#!/usr/bin/env python3
"""Check the Grafana dashboard against a running swarmstate (scripts/deploy-tests.sh).

usage: check_dashboard.py DASHBOARD_JSON BASE_URL ADMIN_TOKEN LIMITED_TOKEN README

1. Drives a short workload through the public API so that every labelled series exists: KV
   writes, a queue task acked and one dead-lettered, a lock, an agent, a partition, requests
   over a token's rate limit.
2. Takes every PromQL expression of every panel (and template variable), substitutes the
   Grafana variables, and checks each with promtool (as recording rules: a real PromQL parser).
3. Checks that every metric name the expressions use is a series in GET /metrics.
4. Checks the README's metrics reference table: every metric in /metrics is listed with its
   type, and every listed one is a metric of src/metrics.rs or the code.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

dashboard_path, base, admin, limited, readme = sys.argv[1:6]


def call(method, path, body=None, token=admin, ok=(200, 201, 204)):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    if ok and status not in ok:
        sys.exit(f"error: {method} {path} answered {status}: {text}")
    return status, (json.loads(text) if text.strip().startswith(("{", "[")) else text)


# 1. Workload.
call("PUT", "/v1/ns/dash/kv/a", {"value": {"n": 1}})
call("GET", "/v1/ns/dash/kv/a")
call("GET", "/v1/ns/dash/kv/missing", ok=(404,))
call("POST", "/v1/queues/dash/tasks", {"payload": {"job": 1}})
call("POST", "/v1/queues/dash/tasks", {"payload": {"job": 2}, "max_attempts": 1})
_, got = call("POST", "/v1/queues/dash/lease", {"worker": "w1", "lease_ms": 30000, "max_tasks": 2})
tasks = got["tasks"]
assert len(tasks) == 2, got
call("POST", f"/v1/queues/dash/tasks/{tasks[0]['id']}/ack", {"lease_token": tasks[0]["lease_token"]})
call("POST", f"/v1/queues/dash/tasks/{tasks[1]['id']}/nack", {"lease_token": tasks[1]["lease_token"], "error": "boom"})
call("POST", "/v1/ns/dash/locks/l1", {"owner": "w1", "ttl_ms": 30000})
call("PUT", "/v1/agents/dash-agent", {"capabilities": ["x"]})
call("POST", "/v1/partitions", {"name": "dash-mem", "owner_agent": "dash-agent", "quota_bytes": 4096, "tier": "working"})
call("PUT", "/v1/ns/dash-mem/kv/k", {"value": "x" * 100})
# Over the limited token's budget: some 429s.
statuses = [call("GET", "/v1/ns/dash/kv/a", token=limited, ok=None)[0] for _ in range(20)]
assert 429 in statuses, statuses

# The gauges read from Redis (queues, partitions, agents) are refreshed by background tasks.
needed = {"queue_tasks", "queue_oldest_ready_age_seconds", "partition_used_bytes", "partition_quota_bytes"}
import time

deadline = time.time() + 30
while True:
    _, metrics_text = call("GET", "/metrics", token=None)
    names = set()
    types = {}
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    if needed <= names or time.time() > deadline:
        break
    time.sleep(0.5)

# 2. Every expression parses.
dash = json.load(open(dashboard_path))
exprs = []


def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            exprs.append((p["title"], t["expr"]))
        walk(p.get("panels", []))


walk(dash["panels"])
for v in dash["templating"]["list"]:
    q = v.get("query")
    if isinstance(q, dict) and q.get("query", "").startswith("label_values("):
        # label_values(<selector>, label) is Grafana's: its selector must be valid PromQL.
        inner = q["query"][len("label_values(") : q["query"].rindex(",")]
        exprs.append((f"variable {v['name']}", inner))
assert len(exprs) >= 20, f"only {len(exprs)} expressions found"


def substitute(e):
    return (
        e.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
    )


rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:expr_{i}", "expr": substitute(e)} for i, (_, e) in enumerate(exprs)]}]}
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(rules, f)  # JSON is YAML
out = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
os.unlink(f.name)
if out.returncode != 0:
    sys.exit("error: a dashboard expression does not parse:\n" + out.stdout + out.stderr)
assert "$" not in json.dumps(rules), "an unsubstituted Grafana variable is left"

# 3. Every metric name exists in /metrics.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "le", "inf", "nan"}


def metric_names(e):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    found = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue  # a function or an operator keyword
        found.add(word)
    return found


missing = {}
used = set()
for title, e in exprs:
    for name in metric_names(substitute(e)):
        used.add(name)
        if name not in names:
            missing.setdefault(name, []).append(title)
if missing:
    sys.exit(f"error: the dashboard uses metrics the service does not export: {missing}")
print(f"   dashboard: {len(exprs)} PromQL expressions parse (promtool); all {len(used)} metrics they use are in /metrics")

# 4. The README's metrics table.
text = open(readme).read()
start = text.index("<!-- metrics-table:")
table = {}
for line in text[start:].splitlines()[1:]:
    if not line.startswith("|"):
        if table:
            break
        continue
    cells = [c.strip() for c in line.strip("|").split("|")]
    if cells[0].startswith("`"):
        table[cells[0].strip("`")] = cells[1]
code = "".join(open(os.path.join(root, f)).read() for root, _, files in os.walk("src") for f in files if f.endswith(".rs"))
for name, kind in types.items():
    if name not in table:
        sys.exit(f"error: {name} is in /metrics but not in the README's metrics table")
    if table[name] != kind:
        sys.exit(f"error: README says {name} is a {table[name]}, /metrics says {kind}")
for name in table:
    if f'"{name}"' not in code:
        sys.exit(f"error: the README lists {name}, which the code does not export")
print(f"   metrics table: {len(table)} rows; the {len(types)} metrics in /metrics are all listed with their type")
