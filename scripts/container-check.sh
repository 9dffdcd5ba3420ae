#!/usr/bin/env bash
# The gateway's image, built and run, not only written:
#   1. builds the image (podman; ENGINE=docker works too), unless --no-build;
#   2. builds a bank of the records' train split on the host (the image's embedder: the default static model) and
#      starts the replay upstream over the test split on loopback, every call taking REPLAY_MS;
#   3. runs the image with the bank mounted read-only and a config naming every bank model at the replay;
#   4. checks /readyz, one `jisi` request, and a graceful stop: a streamed request in flight when SIGTERM
#      arrives finishes whole, and the container exits 0;
#   5. prints the image's size and the container's start time.
#
#   bash scripts/container-check.sh [--no-build]
#
# On these machines podman is set up by ../shared/container/setup.sh (no registry, a loopback index for torch's
# CPU wheel); the project's .venv runs the host side (`bash scripts/test.sh --co -q` makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-podman}
IMAGE=${IMAGE:-jisi-gateway}
RECORDS=${RECORDS:-../shared/data/mini-bench.tar.gz}
PORT=${PORT:-18400}
REPLAY_PORT=${REPLAY_PORT:-18401}
REPLAY_MS=${REPLAY_MS:-1500}
WORK=var/container-check
NAME=jisi-container-check
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$WORK"

if [ "${1:-}" != "--no-build" ]; then
    args=(--format docker)
    if [ "$ENGINE" = podman ] && [ -f /var/tmp/jisi-containers/env.sh ]; then
        # shellcheck disable=SC1091
        source /var/tmp/jisi-containers/env.sh  # these machines: local base images, torch's wheel on loopback
        read -r -a torch <<< "$(jisi_torch_index_arg)"
        args+=(--pull=never --network host "${torch[@]}")
    fi
    started=$(date +%s)
    "$ENGINE" build "${args[@]}" -t "$IMAGE" .
    echo "image built in $(( $(date +%s) - started )) s"
    [ "$ENGINE" = podman ] && declare -F jisi_torch_index_stop > /dev/null && jisi_torch_index_stop
fi

if [ ! -f "$WORK/bank/manifest.json" ]; then
    .venv/bin/jisi-bank build --records "$RECORDS" --split train --out "$WORK/bank"
fi
"$PY" -m localpool.cli replay --records "$RECORDS" --split test --port "$REPLAY_PORT" \
    --latency-ms "$REPLAY_MS,0" > "$WORK/replay.log" 2>&1 &
replay=$!
cleanup() {
    kill "$replay" 2>/dev/null || true
    "$ENGINE" rm -f "$NAME" > /dev/null 2>&1 || true
}
trap cleanup EXIT

"$PY" - "$WORK" "$REPLAY_PORT" <<'EOF'
import json, sys
from pathlib import Path
import yaml
work, port = Path(sys.argv[1]), sys.argv[2]
models = json.loads((work / "bank" / "manifest.json").read_text())["models"]
config = {"bank_path": "/data/bank", "drain": {"grace_s": 1, "deadline_s": 30},
          "upstreams": [{"name": m, "base_url": f"http://127.0.0.1:{port}/v1", "input_usd_per_mtok": 1.0,
                         "output_usd_per_mtok": 2.0} for m in models]}
(work / "gateway.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
EOF
chmod -R a+rX "$WORK/bank" "$WORK/gateway.yaml"  # the image's user is not the host's

"$ENGINE" rm -f "$NAME" > /dev/null 2>&1 || true
started=$("$PY" -c 'import time; print(time.monotonic())')
"$ENGINE" run -d --name "$NAME" --network host -e PORT="$PORT" -e JISI_CONFIG=/etc/jisi/gateway.yaml \
    -v "$PWD/$WORK/bank:/data/bank:ro" -v "$PWD/$WORK/gateway.yaml:/etc/jisi/gateway.yaml:ro" "$IMAGE" > /dev/null

"$PY" - "$PORT" "$REPLAY_PORT" "$started" "$ENGINE" "$NAME" <<'EOF'
import json, subprocess, sys, threading, time
import httpx
port, replay_port, started, engine, name = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
url = f"http://127.0.0.1:{port}"
while True:
    try:
        if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    if time.monotonic() - started > 300:
        sys.exit(subprocess.run([engine, "logs", name]).returncode or "not ready after 300 s")
    time.sleep(0.2)
ready = httpx.get(f"{url}/readyz", timeout=5).json()
print(f"ready in {time.monotonic() - started:.1f} s: bank {ready['bank']['build_id']} "
      f"({ready['bank']['queries']} questions, {ready['bank']['models']} models), embedder {ready['embedder']}")
questions = httpx.get(f"http://127.0.0.1:{replay_port}/questions", params={"n": 2}, timeout=10).json()["data"]
ask = lambda q, **kw: {"model": "jisi", "messages": [{"role": "user", "content": q["question"]}], **kw}
r = httpx.post(f"{url}/v1/chat/completions", json=ask(questions[0]), timeout=60)
info = r.json()["jisi"]
print(f"jisi request: {r.status_code}, {info['mode']} by {info['answered_by']}, {info['upstream_calls']} upstream "
      f"calls, {r.headers['x-jisi-cost-usd']} USD, {r.elapsed.total_seconds():.2f} s")
assert r.status_code == 200
streamed: dict = {}
def stream() -> None:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=ask(questions[1], stream=True), timeout=60) as s:
        streamed["lines"] = [line for line in s.iter_lines() if line.startswith("data: ")]
t = threading.Thread(target=stream)
t.start()
time.sleep(0.5)  # the streamed request waits on its upstream calls
stop = time.monotonic()
subprocess.run([engine, "stop", "-t", "40", name], check=True, capture_output=True)
t.join()
code = subprocess.run([engine, "inspect", name, "--format", "{{.State.ExitCode}}"], capture_output=True,
                      text=True, check=True).stdout.strip()
lines = streamed.get("lines", [])
print(f"graceful stop: exit code {code} after {time.monotonic() - stop:.1f} s; the stream in flight "
      f"{'ended with [DONE]' if lines and lines[-1] == 'data: [DONE]' else 'was CUT'} ({len(lines)} events)")
assert code == "0" and lines and lines[-1] == "data: [DONE]" and not any('"error"' in x for x in lines)
EOF
"$ENGINE" logs "$NAME" 2>&1 | grep -E "draining|reload|ready:" | cut -c1-200 || true
size=$("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}')
echo "image $IMAGE: $(( size / 1000000 )) MB"
echo "container check: ok"
