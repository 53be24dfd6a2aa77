#!/usr/bin/env bash
# Instructions per request (valgrind callgrind: repeatable whatever else the machine does) of
# GET and PUT through target/release/swarmstate, without a tokens file and with one (20
# tokens; the caller's has a rate_per_sec, so the lookup, the scope check, the budget and the
# RateLimit headers are all paid). Needs redis-server, valgrind, python3, curl and a release
# build (cargo build --release --bins). Each figure: 2000 requests after a 600-request warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/release/swarmstate
[ -x "$bin" ] || { echo "build it first: cargo build --release --bins" >&2; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
client() { # port count method token
  python3 - "$@" <<'PY'
import http.client, json, sys
port, n, method, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = http.client.HTTPConnection("127.0.0.1", port)
h = {"content-type": "application/json"}
if token:
    h["authorization"] = "Bearer " + token
body = json.dumps({"value": "x" * 98})
for i in range(n):
    path = "/v1/ns/bench/kv/key%04d" % (i % 100)
    c.request(method, path, body=body if method == "PUT" else None, headers=h)
    r = c.getresponse()
    r.read()
    assert r.status in (200, 201), r.status
PY
}
measure() { # auth: 0 or 1
  local auth=$1 dir rp sp token="" vp
  dir=$(mktemp -d); rp=$(free_port); sp=$(free_port)
  redis-server --port "$rp" --save '' --daemonize yes --dir "$dir" >/dev/null
  local env=(SWARMSTATE_LISTEN="127.0.0.1:$sp" SWARMSTATE_REDIS_URL="redis://127.0.0.1:$rp" SWARMSTATE_LOG=warn SWARMSTATE_KEY_PREFIX=cg)
  if [ "$auth" = 1 ]; then
    token=sst_bench-token
    : >"$dir/tokens.toml"
    for i in $(seq 0 18); do
      printf '[[token]]\nname = "o%s"\nsha256 = "%s"\nnamespaces = ["t-%s-*"]\npermission = "write"\n' \
        "$i" "$(printf 'x%s' "$i" | sha256sum | cut -d' ' -f1)" "$i" >>"$dir/tokens.toml"
    done
    printf '[[token]]\nname = "bench"\nsha256 = "%s"\nnamespaces = ["bench*"]\npermission = "write"\nrate_per_sec = 100000000\n' \
      "$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)" >>"$dir/tokens.toml"
    env+=(SWARMSTATE_TOKENS_FILE="$dir/tokens.toml")
  fi
  env "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$bin" serve >"$dir/log" 2>&1 &
  vp=$!
  for _ in $(seq 300); do curl -sf "127.0.0.1:$sp/readyz" >/dev/null && break; sleep 0.2; done
  client "$sp" 300 PUT "$token"; client "$sp" 300 GET "$token"
  for m in GET PUT; do
    callgrind_control -z "$vp" >/dev/null
    client "$sp" 2000 "$m" "$token"
    callgrind_control -d "$vp" >/dev/null
    sleep 1
    local f ir
    f=$(ls -t "$dir"/cg.out.* | head -1)
    ir=$(grep -m1 '^summary:\|^totals:' "$f" | awk '{print $2}')
    echo "$m $([ "$auth" = 1 ] && echo "with a token   " || echo "without a token") $((ir / 2000)) instructions/request"
  done
  kill "$vp"; wait "$vp" 2>/dev/null || true
  redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
}
measure 0
measure 1
