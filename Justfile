# nnct recipes. Run `bash setup.sh` once first (it installs `just` into .venv/bin).
set shell := ["bash", "-euo", "pipefail", "-c"]
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")
export HF_HUB_OFFLINE := "1"

# Create .venv and install everything (torch pinned to the CPU build first).
setup:
    bash setup.sh

# Trace a few facts the embedded model knows (subject, no context: ROME's experiment); the
# trace ends with a summary of the cube (`nnct info CUBE` prints it again later).
demo out="runs/demo.nc":
    nnct trace --experiment subject-noctx --data experiments/data/known_smollm2.jsonl --max-examples 3 --components hidden --out {{out}}

# The test suite (tiny random models for breadth, the embedded model for a few end-to-end checks).
test *args:
    python -m pytest -q {{args}}

# Only the fast tests (no embedded model).
test-fast *args:
    python -m pytest -q -m "not embedded" {{args}}

# nnct's engine against the plain ROME loop, side by side (prints a table; --json FILE to keep it).
bench *args:
    nnct bench {{args}}

lint:
    ruff check nnct tests experiments
