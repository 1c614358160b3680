#!/usr/bin/env bash
# Validates the Helm chart without a cluster: helm lint, helm template (default values, and a
# variant with a key Secret + PVC + autoscaling off), then checks of the rendered objects.
# helm v3.21.4 is built from the Go module proxy into ~/.cache/kvrun/bin once (needs go).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HELM_VERSION=${HELM_VERSION:-v3.21.4}
BIN="${KVRUN_TOOLS_BIN:-$HOME/.cache/kvrun/bin}"
HELM="$BIN/helm-$HELM_VERSION"
if [[ ! -x $HELM ]]; then
  command -v go >/dev/null || { echo "helm/check.sh: needs go (to build helm $HELM_VERSION)" >&2; exit 1; }
  mkdir -p "$BIN"
  echo "building helm $HELM_VERSION (once) ..." >&2
  GOBIN="$BIN/.gobin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$BIN/.gobin/helm" "$HELM"
fi
CHART="$ROOT/deploy/helm/kvrun"
"$HELM" lint "$CHART"
"$HELM" lint "$CHART" --set server.apiKeySecret=kvrun-key --set model.persistentVolumeClaim=models \
  --set autoscaling.enabled=false
out=$(mktemp -d)
"$HELM" template chat "$CHART" >"$out/default.yaml"
"$HELM" template chat "$CHART" --set server.apiKeySecret=kvrun-key --set model.persistentVolumeClaim=models \
  --set autoscaling.enabled=false --set replicas=3 >"$out/variant.yaml"
PY=${PY:-$(bash "$ROOT/scripts/test-clients.sh")}  # a venv with PyYAML
"$PY" - "$out/default.yaml" "$out/variant.yaml" <<'PYEOF'
import sys
import yaml

def objects(path):
    return {d["kind"]: d for d in yaml.safe_load_all(open(path)) if d}

d = objects(sys.argv[1])
assert set(d) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}, set(d)
c = d["Deployment"]["spec"]["template"]["spec"]["containers"][0]
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    assert c[probe]["httpGet"]["path"] == "/health", probe
assert c["args"][0] == "chat=/models/model" and "--parallel=4" in c["args"], c["args"]
assert c["resources"]["requests"] == c["resources"]["limits"]
assert "replicas" not in d["Deployment"]["spec"]  # the HPA owns it
m = d["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]
assert m["metric"]["name"] == "kvrun_num_requests_waiting", m
assert d["Service"]["spec"]["ports"][0]["targetPort"] == "http"
v = objects(sys.argv[2])
assert "HorizontalPodAutoscaler" not in v and v["Deployment"]["spec"]["replicas"] == 3
spec = v["Deployment"]["spec"]["template"]["spec"]
assert "--api-key-file=/secrets/kvrun/key" in spec["containers"][0]["args"]
vols = {x["name"]: x for x in spec["volumes"]}
assert vols["models"]["persistentVolumeClaim"]["claimName"] == "models"
assert vols["api-key"]["secret"]["secretName"] == "kvrun-key"
print("helm chart: lint clean; rendered objects checked (default values and a key/PVC/no-HPA variant)")
PYEOF
