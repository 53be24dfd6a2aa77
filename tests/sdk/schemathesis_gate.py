"""Judge a schemathesis JSON run report (scripts/sdk-tests.sh).

Fails the run on what must never happen: a server error (ST101; 507 is expected, see
schemathesis.toml), a response that breaks its schema, an undocumented status code, a wrong or
undecodable content type, missing headers, a network error (hang or timeout): any ST1xx. And on
authentication not enforced: ST401 (ignored_auth: a 2xx answer resent without the token, and with
a wrong one, must get 401), ST402, and an ST203 for a request sent without its `Authorization`
(found in the run's log, the optional second argument: the JSON report has no messages). Prints
every failure kind with its operations; the ones that remain allowed are the fuzzer's
disagreements with rules a schema cannot state (opaque cursors, "If-Match or If-None-Match, not
both", key bytes vs characters), listed so a new kind shows up in the log.

Usage: schemathesis_gate.py <report.json> [<schemathesis.log>]
"""
import json
import sys

MUST_BE_ZERO = {
    "ST101",  # server error
    "ST102",  # server error on a content-type probe
    "ST103",  # undocumented status code
    "ST104",  # missing content type
    "ST105",  # undocumented content type
    "ST106",  # malformed media type
    "ST107",  # missing documented headers
    "ST108",  # response body breaks its schema
    "ST109",  # malformed JSON body
    "ST110",  # body not decodable as its content type
    "ST111",  # discriminator mismatch
    "ST112",  # response time over the limit
    "ST401",  # authentication declared but not enforced (ignored_auth)
    "ST402",  # one identity's object served to another
}

report = json.load(open(sys.argv[1]))
cases = report["test_cases"]
ops = report["operations"]
print(
    f"schemathesis {report['schemathesis_version']}: {ops['tested']} operations, "
    f"{cases['generated']} cases, {cases['with_failures']} with failures, {cases['errored']} errored"
)
bad = []
for f in report["failures"]:
    line = f"  {f['code']} {f['title']}: {f['count']} ({', '.join(f['operations'])})"
    print(line)
    if f["code"] in MUST_BE_ZERO:
        bad.append(line)
if len(sys.argv) > 2:
    # missing_required_header, for the Authorization header: a request without it must get 401.
    for n, text in enumerate(open(sys.argv[2], errors="replace"), 1):
        if "when missing required 'Authorization' header" in text:
            line = f"  ST203 without Authorization (log line {n}): {text.strip()}"
            print(line)
            bad.append(line)
for e in report["errors"]:
    line = f"  error {e['title']}: {e['count']}"
    print(line)
    bad.append(line)
if bad:
    print("schemathesis: failures that must not happen:\n" + "\n".join(bad), file=sys.stderr)
    sys.exit(1)
print("schemathesis: 0 server errors, 0 schema violations, 0 undocumented statuses or content types")
