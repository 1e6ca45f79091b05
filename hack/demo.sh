#!/usr/bin/env bash
# The operator's main job on the local default, in one command:
#   bash hack/demo.sh        # bootstrap, start the local control plane with KWOK GPU nodes,
#                            # install the CRD, run the operator, apply
#                            # examples/llama70b-awq.yaml and show it reconciled
#   bash hack/demo.sh down   # stop the operator and the control plane
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
state=.cluster
log() { echo "[demo] $*" >&2; }

stop_operator() {
  if [ -f "$state/operator.pid" ]; then
    pid=$(cat "$state/operator.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$state/operator.pid"
  fi
}

if [ "${1:-up}" = down ]; then
  stop_operator
  [ -x .venv/bin/python ] && .venv/bin/python hack/cluster.py down
  exit 0
fi

bash hack/bootstrap.sh
bin=$(bash hack/build-control-plane.sh 2>/dev/null | tail -1)
kubectl="$bin/kubectl"

export_line=$(.venv/bin/python hack/cluster.py up | grep '^export KUBECONFIG=' | tail -1)
eval "$export_line"
log "cluster up: $export_line"

"$kubectl" apply -f crds/modeldeployment.yaml
"$kubectl" wait --for=condition=Established crd/modeldeployments.openmodel.dev --timeout=60s

if [ -f "$state/operator.pid" ] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; then
  log "operator already running (pid $(cat "$state/operator.pid"))"
else
  log "starting the operator (log: $state/operator.log)"
  OPENMODEL_LIVENESS=http://127.0.0.1:18080/healthz setsid .venv/bin/python -m openmodel \
    >"$state/operator.log" 2>&1 &
  echo $! >"$state/operator.pid"
fi

"$kubectl" apply -f examples/llama70b-awq.yaml
if ! "$kubectl" wait --for=condition=Ready md/llama70b-awq --timeout=120s; then
  log "not Ready in time; operator log tail:"
  tail -40 "$state/operator.log" >&2
  exit 1
fi

echo
"$kubectl" get md
echo
"$kubectl" get pods -l openmodel.dev/model-deployment=llama70b-awq -o wide
echo
"$kubectl" get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count
echo
echo "$export_line"
echo "# the operator keeps running; stop everything with: bash hack/demo.sh down"
