#!/usr/bin/env bash
# The Helm chart helm/swarmstate (called by scripts/deploy-tests.sh, which puts helm,
# promtool, kubernetes-validate and target/release/swarmstate in place):
#   helm lint --strict and helm template for each values file in helm/swarmstate/ci (standalone,
#   Sentinel, Cluster over TLS, every optional part on); the rendered manifests against the
#   Kubernetes 1.30 schemas (kubernetes-validate --strict, which must also refuse a broken copy);
#   what they say (scripts/check_helm.py); the PrometheusRule's rules through promtool; and
#   bad values refused by values.schema.json or the templates.
set -euo pipefail
cd "$(dirname "$0")/.."
chart=helm/swarmstate
validate=target/deploy/venv/bin/kubernetes-validate
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "   $(helm version --short), kubernetes-validate $("$validate" --version 2>&1 | tail -1)"
target/release/swarmstate serve --help | grep -o 'SWARMSTATE_[A-Z_]*' | sort -u >"$out/settings.txt"
for values in "$chart"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  helm lint --strict "$chart" -f "$values" >"$out/lint-$name.txt" || { cat "$out/lint-$name.txt"; exit 1; }
  helm template swarmstate "$chart" -f "$values" >"$out/$name.yaml"
  "$validate" --strict --quiet --no-warn -k 1.30.0 "$out/$name.yaml"
  target/deploy/venv/bin/python scripts/check_helm.py "$name" "$out/$name.yaml" "$out/settings.txt" "$chart"
  echo "   $name: lint --strict, template, Kubernetes 1.30 schemas, manifest checks"
done
# The validator has teeth: a wrong type in the Deployment is refused.
sed 's/containerPort: 8080/containerPort: "eighty"/' "$out/standalone.yaml" >"$out/broken.yaml"
if "$validate" --strict --quiet --no-warn -k 1.30.0 "$out/broken.yaml" >/dev/null 2>&1; then
  echo "error: kubernetes-validate accepted a Deployment with containerPort \"eighty\"" >&2
  exit 1
fi
# The PrometheusRule carries rules promtool accepts.
target/deploy/venv/bin/python scripts/check_helm.py --extract-rules "$out/all-on.yaml" >"$out/rules.json"
promtool check rules "$out/rules.json" >/dev/null
# Bad values fail at install/template time, with a message that names the problem.
img=(--set image.repository=registry.example.com/swarmstate)
cases=0
refuse() {
  local why=$1 message=$2
  shift 2
  cases=$((cases + 1))
  if helm template swarmstate "$chart" "$@" >"$out/refused.txt" 2>&1; then
    echo "error: helm template accepted $why ($*)" >&2
    exit 1
  fi
  grep -qE "$message" "$out/refused.txt" || {
    echo "error: refusing $why, helm said something else than /$message/:" >&2
    cat "$out/refused.txt" >&2
    exit 1
  }
}
ok=(--set auth.insecureNoAuth=true "${img[@]}")
refuse "no image repository" "image.repository" --set auth.insecureNoAuth=true
refuse "no tokens and not insecureNoAuth" "insecureNoAuth" "${img[@]}"
refuse "an unknown Redis mode" "redis.mode" "${ok[@]}" --set redis.mode=bogus
refuse "sentinel mode without sentinels" "sentinel" "${ok[@]}" --set redis.mode=sentinel
refuse "cluster mode without nodes" "cluster" "${ok[@]}" --set redis.mode=cluster
refuse "a password that is not URL-safe" "redis.password" "${ok[@]}" --set 'redis.password=a@b'
refuse "a negative replica count" "replicaCount" "${ok[@]}" --set replicaCount=-1
refuse "an unknown durability" "durability" "${ok[@]}" --set durability=sometimes
refuse "a misspelt top-level value" "replicas" "${ok[@]}" --set replicas=3
refuse "a sentinel address without a port" "sentinels" "${ok[@]}" --set redis.mode=sentinel \
  --set 'redis.sentinel.sentinels[0]=sentinel-0'
refuse "a backup key that is not 32 bytes" "backupKey" "${ok[@]}" --set backupKey=abc
refuse "a config key the chart sets itself (a duplicate TOML key)" "durability" "${ok[@]}" --set config.durability=aof
refuse "a TLS secret without tls: true" "tls" "${ok[@]}" --set redis.tlsSecret=redis-client-tls
# A CA-only TLS secret sets no client certificate.
helm template swarmstate "$chart" "${ok[@]}" --set redis.tls=true --set redis.tlsSecret=ca-only \
  --set redis.tlsClientCert=false >"$out/ca-only.yaml"
grep -q SWARMSTATE_REDIS_TLS_CA_FILE "$out/ca-only.yaml" && ! grep -q SWARMSTATE_REDIS_TLS_CERT_FILE "$out/ca-only.yaml" || {
  echo "error: redis.tlsClientCert=false still set a client certificate" >&2
  exit 1
}
# ... and the same command with valid values renders.
helm template swarmstate "$chart" "${ok[@]}" >/dev/null
echo "   bad values refused, each with its message: $cases cases"
