#!/usr/bin/env python3
"""What the chart's rendered manifests say (scripts/helm-tests.sh).

usage: check_helm.py CASE RENDERED.yaml SETTINGS.txt CHART_DIR
       check_helm.py --extract-rules RENDERED.yaml   (the PrometheusRule's spec, as JSON)

Runs with target/deploy/venv/bin/python (PyYAML comes with kubernetes-validate).
"""
import json
import sys
import tomllib

try:
    import yaml  # from the venv (check-jsonschema depends on it)
except ImportError:  # pragma: no cover
    sys.exit("error: PyYAML is needed (scripts/deploy-tests.sh installs it in target/deploy/venv)")


def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


if sys.argv[1] == "--extract-rules":
    docs = load(sys.argv[2])
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    print(json.dumps({"groups": rule["spec"]["groups"]}))
    sys.exit(0)

case, rendered, settings_file, chart = sys.argv[1:5]
docs = load(rendered)
settings = set(open(settings_file).read().split())
kinds = {}
for d in docs:
    kinds.setdefault(d["kind"], []).append(d)


def check(cond, msg):
    if not cond:
        sys.exit(f"error: {case}: {msg}")


(dep,) = kinds["Deployment"]
pod = dep["spec"]["template"]["spec"]
(c,) = pod["containers"]
sc = c["securityContext"]
check(sc.get("readOnlyRootFilesystem") is True, "root filesystem not read-only")
check(sc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities not all dropped")
check(pod["securityContext"].get("runAsNonRoot") is True, "pod may run as root")
check(pod["securityContext"].get("runAsUser") == 10001, "not the image's uid 10001")
check(c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, "startup probe")
check(
    c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 45,
    "the startup probe outlasts start-up's 30 s wait for Redis",
)
check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, "liveness probe")
check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, "readiness probe")
check(c["ports"][0]["containerPort"] == 8080, "container port")
check("requests" in c["resources"], "no resource requests")
check(len(pod.get("topologySpreadConstraints", [])) == 2, "no topology spread")
mounts = {m["mountPath"] for m in c["volumeMounts"]}
check("/data" in mounts, "/data is not a writable volume")
env = {e["name"]: e for e in c["env"]}
for name in env:
    check(name in settings or name == "REDIS_PASSWORD", f"{name} is not a setting of swarmstate serve")
# The config file is TOML whose keys are settings.
(cm,) = [d for d in kinds["ConfigMap"] if "config.toml" in d.get("data", {})]
conf = tomllib.loads(cm["data"]["config.toml"])
for key in conf:
    check("SWARMSTATE_" + key.upper() in settings, f"config.toml key {key} is not a setting")
check(env["SWARMSTATE_CONFIG"]["value"] == "/etc/swarmstate/config/config.toml", "SWARMSTATE_CONFIG path")
check(env["SWARMSTATE_LISTEN"]["value"] == "0.0.0.0:8080", "listen address")

url = env["SWARMSTATE_REDIS_URL"].get("value")
expected = {
    "standalone": "redis://:$(REDIS_PASSWORD)@redis-master:6379/0",
    "sentinel": "redis+sentinel://:$(REDIS_PASSWORD)@redis-sentinel-0.redis:26379,redis-sentinel-1.redis:26379,redis-sentinel-2.redis:26379/mymaster/0",
    "cluster": "rediss-cluster://swarmstate:$(REDIS_PASSWORD)@redis-cluster-0.redis:6379,redis-cluster-1.redis:6379,redis-cluster-2.redis:6379",
    "all-on": "redis://redis:6379/2",
}[case]
check(url == expected, f"SWARMSTATE_REDIS_URL {url!r}, expected {expected!r}")
if "$(REDIS_PASSWORD)" in url:
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    names = [e["name"] for e in c["env"]]
    check(names.index("REDIS_PASSWORD") < names.index("SWARMSTATE_REDIS_URL"), "REDIS_PASSWORD after the URL")

if case == "sentinel":
    check("Secret" not in kinds, "an existing Secret was given: the chart must not make one")
    check(env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "swarmstate-secrets", "key": "redis-password"}, "password ref")
    check(conf["durability"] == "replica", "durability")
if case == "cluster":
    check("SWARMSTATE_TOKENS_FILE" not in env and conf.get("insecure_no_auth") is True, "insecureNoAuth")
    check(env["SWARMSTATE_REDIS_TLS_CA_FILE"]["value"] == "/etc/swarmstate/redis-tls/ca.crt", "TLS CA")
if case in ("standalone", "all-on"):
    (secret,) = kinds["Secret"]
    check("[[token]]" in secret["stringData"]["tokens.toml"], "tokens file in the Secret")
    check(env["SWARMSTATE_TOKENS_FILE"]["value"] == "/etc/swarmstate/tokens/tokens.toml", "tokens path")

optional = {"PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"}
if case == "all-on":
    check(optional <= set(kinds), f"missing {optional - set(kinds)}")
    check("replicas" not in dep["spec"], "with the HPA on, the Deployment must not pin replicas")
    check(env["SWARMSTATE_BACKUP_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "backup-key", "backup key")
    check(conf["command_timeout_ms"] == 1500 and conf["key_prefix"] == "prod", "config values")
    (rule,) = kinds["PrometheusRule"]
    alerts = yaml.safe_load(open(f"{chart}/alerts/swarmstate-rules.yaml"))
    check(rule["spec"]["groups"] == alerts["groups"], "PrometheusRule differs from alerts/swarmstate-rules.yaml")
    (sm,) = kinds["ServiceMonitor"]
    check(sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics", "ServiceMonitor endpoint")
    check(sm["metadata"]["labels"].get("release") == "prometheus", "ServiceMonitor labels")
    (dash,) = [d for d in kinds["ConfigMap"] if "swarmstate.json" in d.get("data", {})]
    check(dash["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard label")
    check(json.loads(dash["data"]["swarmstate.json"]) == json.load(open(f"{chart}/dashboards/swarmstate.json")), "dashboard content")
else:
    check(not (optional & set(kinds)), f"optional parts rendered while off: {optional & set(kinds)}")
    check(dep["spec"]["replicas"] == 2, "replicas")
