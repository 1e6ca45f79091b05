#!/usr/bin/env bash
# The operator's main job on the local default, in one command:
#   bash hack/demo.sh        # bootstrap, start the local control plane with KWOK GPU nodes,
#                            # install the CRD, run the operator, apply
#                            # examples/llama70b-awq.yaml and show it reconciled, then
#                            # start the gateway (auth enforced) and a simulated engine
#                            # on the KWOK pod, mint a ServiceAccount token allowed to use
#                            # the model, and send a chat completion through the gateway
#   bash hack/demo.sh down   # stop the operator and the control plane
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
state=.cluster
log() { echo "[demo] $*" >&2; }

stop_process() {  # stop_process NAME: the process group in $state/NAME.pid
  if [ -f "$state/$1.pid" ]; then
    pid=$(cat "$state/$1.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$state/$1.pid"
  fi
}

start_process() {  # start_process NAME COMMAND...: in its own session, logged, unless running
  local name=$1; shift
  if [ -f "$state/$name.pid" ] && kill -0 "$(cat "$state/$name.pid")" 2>/dev/null; then
    log "$name already running (pid $(cat "$state/$name.pid"))"
  else
    log "starting the $name (log: $state/$name.log)"
    setsid "$@" >"$state/$name.log" 2>&1 &
    echo $! >"$state/$name.pid"
  fi
}

if [ "${1:-up}" = down ]; then
  for p in engines gateway operator; do stop_process "$p"; done
  [ -x .venv/bin/python ] && .venv/bin/python -m perf.cluster down
  exit 0
fi

bash hack/bootstrap.sh
bin=$(bash hack/build-control-plane.sh 2>/dev/null | tail -1)
kubectl="$bin/kubectl"

export_line=$(.venv/bin/python -m perf.cluster up | grep '^export KUBECONFIG=' | tail -1)
eval "$export_line"
log "cluster up: $export_line"

"$kubectl" apply -f crds/modeldeployment.yaml -f crds/apikey.yaml
"$kubectl" wait --for=condition=Established crd/modeldeployments.openmodel.dev \
  crd/apikeys.openmodel.dev --timeout=60s
# Who may use models through the gateway (docs/security.md): the openmodel-user role.
"$kubectl" apply -f manifests/aggregate-roles.yaml

gateway_port=18081
# /metrics and /demand: the gateway's metrics port (not 9090, the operator's here).
gateway_metrics_port=18082
mkdir -p "$state"
cat >"$state/platform-config.yaml" <<EOF
# The demo's platform config: the autoscaler reads held requests from the local gateway.
gateway:
  demandUrls: ["http://127.0.0.1:$gateway_metrics_port/demand"]
EOF
export OPENMODEL_CONFIG="$repo/$state/platform-config.yaml"
OPENMODEL_LIVENESS=http://127.0.0.1:18080/healthz \
  start_process operator .venv/bin/python -m openmodel
start_process gateway .venv/bin/python -m openmodel.gateway --host 127.0.0.1 --port "$gateway_port" \
  --metrics-port "$gateway_metrics_port"

"$kubectl" apply -f examples/llama70b-awq.yaml
if ! "$kubectl" wait --for=condition=Ready md/llama70b-awq --timeout=120s; then
  log "not Ready in time; operator log tail:"
  tail -40 "$state/operator.log" >&2
  exit 1
fi

start_process engines .venv/bin/python -m perf.demo_engines default llama70b-awq
gateway="http://127.0.0.1:$gateway_port"
# The gateway enforces auth (the default): a ServiceAccount allowed to use the model.
"$kubectl" create serviceaccount demo-client --dry-run=client -o yaml | "$kubectl" apply -f -
"$kubectl" create rolebinding demo-client-use --clusterrole=openmodel-user \
  --serviceaccount=default:demo-client --dry-run=client -o yaml | "$kubectl" apply -f -
token=$("$kubectl" create token demo-client --duration=1h)
refused=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$gateway/v1/models")
log "without a token the gateway answers $refused; with demo-client's token:"
log "a chat completion through the gateway ($gateway), held until the engine answers"
answer=$(curl -sS --max-time 60 "$gateway/v1/chat/completions" -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $token" \
  -d '{"model": "llama-3.1-70b-instruct", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}') || {
  log "no answer; gateway log tail:"; tail -20 "$state/gateway.log" >&2; exit 1; }
echo
echo "POST $gateway/v1/chat/completions -> $answer"
echo
"$kubectl" get md
echo
"$kubectl" get pods -l openmodel.dev/model-deployment=llama70b-awq -o wide
echo
"$kubectl" get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count
echo
echo "$export_line"
echo "# the gateway: $gateway/v1/models (simulated engine: the pods are KWOK's); send"
echo "#   -H \"Authorization: Bearer \$($kubectl create token demo-client)\""
echo "# the operator keeps running; stop everything with: bash hack/demo.sh down"
