#!/usr/bin/env bash
# Vendored unchanged (apart from these two lines) from ../shared/ndif/local-ndif.sh, so that the
# integration tests (tests/test_ndif.py) and CI run from a clean clone wherever it lies.
# Local NDIF (ndif 0.1.2 from PyPI) on loopback, CPU only, for testing nnsight remote=True.
#
#   bash local-ndif.sh setup   # venv + packages + redis-server + tiny model + shim  (~95 s)
#   bash local-ndif.sh start   # redis, moto (S3), ray head + controller, API    (22-38 s)
#   bash local-ndif.sh test    # one remote trace, compared with a local run
#   bash local-ndif.sh status  # listening sockets + /status
#   bash local-ndif.sh stop    # stops every process this script started, by PID / session id
#
# Versions this was checked with (2026-11-23): Python 3.11.7 (ndif declares >=3.12 but runs on
# 3.11; installed with --no-deps --ignore-requires-python), torch 2.13.0+cpu, nnsight 0.8.1,
# transformers 5.22.2 (NOT 5.23.0, see below), ray 2.60.0, redis-server 7.0.15 (Debian),
# moto 5.2.5 (S3 stand-in for rustfs), fastapi 0.165.0, gunicorn 27.0.1, uvicorn 0.54.0.
#
# Deviations from a stock `ndif start` (which needs NVIDIA GPUs + a rustfs binary from GitHub):
#   * rustfs -> `moto_server` (PyPI) on 127.0.0.1:9000 (results > 8 MiB and non-blocking jobs).
#   * `ray start` by hand: fake GPU (--num-gpus=1 + cuda_memory_bytes resource) because the
#     controller only manages nodes that report "GPU"; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 so the
#     node IP is 127.0.0.1 and Ray's gRPC servers bind loopback (ndif's start.sh uses 0.0.0.0).
#   * NDIF_MODEL_IMPORT_PATH=ndif_cpu_shim.CPUModelActor: ndif's ModelActor calls torch.cuda.*
#     and checks that every weight is on CUDA; the shim loads on CPU instead.
#   * NDIF_CONTROLLER_IMPORT_PATH=ndif_cpu_shim.ControllerActor: same controller, but importing
#     the shim patches nnsight 0.8.1's Remotable.describe_checkpoint/max_tp_size to accept the
#     trust_remote_code kwarg ndif 0.1.2 passes (else: TypeError at deploy).
#   * gunicorn run by hand with --bind 127.0.0.1:8001 (ndif's gunicorn_conf binds 0.0.0.0).
#   * transformers pinned to 5.22.2: in 5.23.0 pipelines' check_task() returns the pipeline
#     class as a *string*, so nnsight 0.8.1's meta build (no dispatch) sources no tokenizer and
#     fails with "Impossible to guess which tokenizer to use" -- on the server this breaks the
#     evaluator's fallback sizing of a local-path model. (Client side: pass tokenizer=.)
#
# Client side (nnsight 0.8.1, any venv incl. transformers 5.23):
#   export NDIF_HOST=http://127.0.0.1:8001     # or nnsight.CONFIG.API.HOST = ..., or remote="http://..."
#   no API key needed (no NDIF_POSTGRES_URL => auth off); plain http/ws, no TLS.
#   import nnsight.modeling.huggingface as nhf; nhf._ID_CACHE[path] = path   # local dir as repo id
#   m = LanguageModel(path, task="text-generation", tokenizer=AutoTokenizer.from_pretrained(path))
#   with m.trace("...", remote=True): h = m.model.layers[-1].output.save()
#
# Timings seen on the 2-core box: start 22-38 s; first trace (deploys the model) 8-9.5 s;
# warm traces 0.05-0.08 s; stop ~15 s. RSS: ray ~3.1 GiB, api ~0.7 GiB, moto 76 MiB, redis 12 MiB.
set -euo pipefail

W=${NDIF_WORK:-${TMPDIR:-/tmp}/local-ndif}
VENV=${NDIF_VENV:-$W/venv}
MODEL=${NDIF_TINY_MODEL:-$W/tiny-llama}
RUN=$W/run
LOGS=$W/logs

envs() {
  export PATH=$VENV/bin:$PATH
  export NDIF_HOME=$W/home
  export NDIF_REDIS_URL=redis://127.0.0.1:6379
  export NDIF_OBJECT_STORE_URL=http://127.0.0.1:9000
  export NDIF_OBJECT_STORE_ACCESS_KEY=testing NDIF_OBJECT_STORE_SECRET_KEY=testing
  export NDIF_RAY_ADDRESS=ray://127.0.0.1:10001
  export NDIF_API_PORT=8001
  export NDIF_MODEL_IMPORT_PATH=ndif_cpu_shim.CPUModelActor
  export NDIF_CONTROLLER_IMPORT_PATH=ndif_cpu_shim.ControllerActor
  export NDIF_DEFAULT_DTYPE=float32
  export PYTHONPATH=$W/shim
  export GRPC_ENABLE_FORK_SUPPORT=0
  export RAY_USAGE_STATS_ENABLED=0
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
}

wait_for() {  # wait_for SECONDS CMD...
  local n=$(( $1 * 4 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "timed out waiting for: $*" >&2; return 1
}

write_files() {
  mkdir -p "$W/shim"
  cat > "$W/shim/ndif_cpu_shim.py" <<'SHIM_EOF'
"""CPU-only model actor for a local NDIF (ndif 0.1.2 hard-wires CUDA in its ModelActor).

Point the controller at it with
  NDIF_MODEL_IMPORT_PATH=ndif_cpu_shim.CPUModelActor
and put this directory on PYTHONPATH of the `ray start` process (workers inherit it).
The Ray node must still advertise a fake GPU (`--num-gpus=1`) plus a
`cuda_memory_bytes` resource, because the controller only manages nodes with "GPU".
"""
import logging

import ray
import torch
from nnsight.modeling.huggingface import HuggingFaceModel

from ndif.services.ray.deployments.modeling.base import BaseModelDeployment

logger = logging.getLogger("ndif.modeling")

# cleanup() calls torch.cuda.synchronize(), which raises on a CPU-only torch.
if not torch.cuda.is_available():
    torch.cuda.synchronize = lambda *a, **k: None


class CPUModelDeployment(BaseModelDeployment):
    # Parking HOT->WARM moves weights GPU->CPU; meaningless here, so evict instead.
    CACHEABLE = False

    def __init__(self, *args, **kwargs):
        # Ray pickles actor classes by value, so make sure this module (and its patches)
        # is really imported in the actor's worker process.
        import ndif_cpu_shim  # noqa: F401
        super().__init__(*args, **kwargs)

    def load_from_disk(self) -> HuggingFaceModel:
        model = HuggingFaceModel.from_model_key(
            self.model_key,
            dispatch=True,
            dtype=self.dtype_name,
            device="cpu",
            **self.kwargs,
        )
        model._module.requires_grad_(False)
        logger.info(f"Loaded {self.model_key} on CPU")
        return model

    async def to_cache(self) -> None:
        await self.cancel("preempted")
        self.cached = True

    def from_cache(self, gpu_mem_bytes_by_id) -> None:
        self.gpu_mem_bytes_by_id = gpu_mem_bytes_by_id
        self.cached = False


@ray.remote(num_cpus=1, max_restarts=-1)
class CPUModelActor(CPUModelDeployment):
    CACHEABLE = False


# ---------------------------------------------------------------------------
# nnsight 0.8.1 (latest on PyPI) vs ndif 0.1.2: the controller's evaluator calls
#   Remotable.describe_checkpoint(model_key, dtype, trust_remote_code=...)
#   Remotable.max_tp_size(model_key, trust_remote_code=...)
# but 0.8.1's signatures have no `trust_remote_code` (TypeError at deploy time).
# Accept and drop it (0.8.1 reads trust_remote_code from the model key itself).
import inspect as _inspect

from nnsight.modeling.mixins.remotable import Remotable as _Remotable


def _accept_trust_remote_code(name):
    original = getattr(_Remotable, name).__func__
    if "trust_remote_code" in _inspect.signature(original).parameters:
        return

    def wrapper(cls, model_key, *args, trust_remote_code=False, **kwargs):
        return original(cls, model_key, *args, **kwargs)

    wrapper.__name__ = name
    setattr(_Remotable, name, classmethod(wrapper))


_accept_trust_remote_code("describe_checkpoint")
_accept_trust_remote_code("max_tp_size")

# A controller class importable from this module, so that the controller's Ray worker
# imports this module (and the patch above) when it unpickles the class.
# Select it with NDIF_CONTROLLER_IMPORT_PATH=ndif_cpu_shim.ControllerActor
from ndif.services.ray.deployments.controller.controller import _ControllerActor


@ray.remote(num_cpus=1, num_gpus=0, max_restarts=-1, resources={"head": 1})
class ControllerActor(_ControllerActor):
    def __init__(self, *args, **kwargs):
        import ndif_cpu_shim  # noqa: F401  (applies the nnsight patch in this worker)
        super().__init__(*args, **kwargs)
SHIM_EOF
  cat > "$W/make_tiny.py" <<'TINY_EOF'
"""Build a tiny random-weight Llama + a trained BPE tokenizer, save to a local dir."""
import sys, torch
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"
texts = [
    "The Eiffel Tower is in the city of Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a tiny tokenizer for testing nnsight remote execution.",
    "Deep inference fabric runs interventions on language models.",
] * 50
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(texts, trainer)
hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                 eos_token="</s>", pad_token="<pad>")
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                  bos_token_id=1, eos_token_id=2, pad_token_id=3)
model = LlamaForCausalLM(cfg)
model.save_pretrained(out)
hf_tok.save_pretrained(out)
print("saved", out, sum(p.numel() for p in model.parameters()), "params, vocab", len(hf_tok))
TINY_EOF
  cat > "$W/client_remote.py" <<'CLIENT_EOF'
"""Run one nnsight remote trace against a local NDIF at $NDIF_HOST and check it against a local run."""
import os, sys, time
os.environ.setdefault("NDIF_HOST", "http://127.0.0.1:8001")   # read by nnsight.CONFIG at import
import torch
import nnsight
import nnsight.modeling.huggingface as nhf
from nnsight import LanguageModel
from transformers import AutoTokenizer

P = sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"
PROMPT = "The Eiffel Tower is in the city of"
print("nnsight", nnsight.__version__, "host", nnsight.CONFIG.API.HOST)

# A local directory is not a Hub repo id: nnsight's to_model_key() canonicalizes the id via
# HfApi().model_info(), which raises HFValidationError for a path. Pre-seed its cache.
nhf._ID_CACHE[P] = P

# tokenizer passed explicitly: with transformers 5.23 nnsight 0.8.1's meta build cannot infer it
m = LanguageModel(P, task="text-generation", tokenizer=AutoTokenizer.from_pretrained(P))
print("model_key:", m.to_model_key())

for i in range(int(os.environ.get("N_TRACES", "2"))):
    t = time.time()
    with m.trace(PROMPT, remote=True):
        h = m.model.layers[-1].output.save()
        logits = m.lm_head.output.save()
    print(f"remote trace {i}: {time.time()-t:.2f}s  hidden {tuple(h.shape)} {h.dtype}  logits {tuple(logits.shape)}")

# local reference with the same weights, float32
ref = LanguageModel(P, task="text-generation", dispatch=True, device_map="cpu", dtype=torch.float32)
with ref.trace(PROMPT):
    h_ref = ref.model.layers[-1].output.save()
print("max |remote - local| =", (h - h_ref).abs().max().item(), "allclose:", torch.allclose(h, h_ref, atol=1e-5))
CLIENT_EOF
}

setup() {
  mkdir -p "$W/shim" $W/dl
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0                       # CPU wheel from local disk
  "$VENV/bin/pip" install -q 'nnsight==0.8.1' 'transformers==5.22.2' pydantic redis click \
      python-dotenv pyyaml boto3 fastapi 'uvicorn[standard]' gunicorn python-multipart \
      'ray[default]==2.60.0' accelerate numpy zstandard peft 'moto[server]'
  # ndif declares Requires-Python >=3.12; its code runs on 3.11. Deps installed above, so --no-deps.
  "$VENV/bin/pip" download -q --no-deps --python-version 3.12 --only-binary=:all: ndif==0.1.2 -d $W/dl
  "$VENV/bin/pip" install -q --no-deps --ignore-requires-python $W/dl/ndif-0.1.2-py3-none-any.whl
  command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
  write_files
  [ -f "$MODEL/config.json" ] || HF_HUB_OFFLINE=1 "$VENV/bin/python" "$W/make_tiny.py" "$MODEL"
}

start() {
  envs; mkdir -p "$RUN" "$LOGS" "$W/ray" "$NDIF_HOME"
  local t0; t0=$(date +%s.%N)
  setsid redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
      > "$LOGS/redis.log" 2>&1 < /dev/null & echo $! > "$RUN/redis.sid"
  setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p 9000 > "$LOGS/moto.log" 2>&1 < /dev/null &
  echo $! > "$RUN/moto.sid"
  wait_for 20 redis-cli -h 127.0.0.1 -p 6379 ping
  wait_for 30 curl -sf -o /dev/null http://127.0.0.1:9000/

  # Ray head (daemonizes; everything it spawns shares this session id).
  setsid bash -c 'echo $$ > "$0"; exec ray start --head --node-ip-address=127.0.0.1 --port=6385 \
      --ray-client-server-port=10001 --num-cpus=4 --num-gpus=1 --object-store-memory=200000000 \
      --resources="{\"head\": 10, \"cuda_memory_bytes\": 4000000000, \"cpu_memory_bytes\": 8000000000}" \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port=8265 \
      --temp-dir="$1" --disable-usage-stats' "$RUN/ray.sid" "$W/ray" > "$LOGS/ray_start.log" 2>&1 < /dev/null
  # Controller: a detached actor launched by a short-lived driver (what ray/start.sh does).
  RAY_ADDRESS=127.0.0.1:6385 timeout 120 python -m ndif.services.ray.deployments.controller.controller \
      > "$LOGS/controller_launch.log" 2>&1

  # API: gunicorn + uvicorn worker; its on_starting hook spawns the queue dispatcher.
  NDIF_SERVICE=api setsid gunicorn --config python:ndif.services.api.gunicorn_conf \
      --bind 127.0.0.1:8001 --workers 1 ndif.services.api.app:app > "$LOGS/api.log" 2>&1 < /dev/null &
  echo $! > "$RUN/api.sid"
  wait_for 120 curl -sf http://127.0.0.1:8001/connected
  echo "NDIF up on http://127.0.0.1:8001 in $(echo "$(date +%s.%N) - $t0" | bc) s"
}

stop() {
  # Every process started here is in a session of its own (setsid); end each session's
  # processes by PID: TERM, wait, then KILL what is left.
  for name in api ray moto redis; do
    f=$RUN/$name.sid; [ -f "$f" ] || continue
    sid=$(cat "$f")
    pids=$(ps -eo pid=,sid= | awk -v s="$sid" '$2==s {print $1}')
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 20); do
      pids=$(ps -eo pid=,sid=,stat= | awk -v s="$sid" '$2==s && $3 !~ /Z/ {print $1}')
      [ -z "$pids" ] && break; sleep 0.5
    done
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    rm -f "$f"; echo "stopped $name (session $sid)"
  done
}

status() {
  ss -ltnp | grep -E 'redis|moto|gunicorn|gcs_server|raylet|ray|python' || true
  curl -s --max-time 30 http://127.0.0.1:8001/status; echo
}

test_trace() {
  envs
  NDIF_HOST=http://127.0.0.1:8001 timeout 300 python "$W/client_remote.py" "$MODEL"
}

case "${1:-}" in
  setup) setup ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  test) test_trace ;;
  *) echo "usage: $0 setup|start|test|status|stop" >&2; exit 2 ;;
esac
