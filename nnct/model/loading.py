"""Loading a model: the embedded default, a local directory, a hub id, or one already loaded.

Models come from three places: the embedded default (`smollm2-135m`, see `embedded`), a
local directory, or a hub id (only for users whose machine reaches a hub). A model the
user has loaded already (a transformers model with its tokenizer, or an nnsight model) is
wrapped as it is (`wrap`). For a run on a remote server, `load(..., weights=False)` builds
the model on PyTorch's meta device from its config: the parts and sizes are there, the
weights stay on the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import compat
from ..errors import ConfigError, ModelNotFound
from . import embedded
from .weights import directory_digest
from .parts import REMOTE, Adapter

DTYPES = ("float32", "bfloat16", "float16")


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device '{device}': use cpu, cuda or auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA device")
    return device


def load(name: str = embedded.NAME, device: str = "cpu", dtype: str = "float32", weights: bool = True) -> Adapter:
    """The embedded default, a local directory, or a hub id, as an Adapter; without its
    weights (`weights=False`, for a remote server, which picks device and dtype) when asked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}': use {', '.join(DTYPES)}")
    device = _device(device) if weights else REMOTE
    local = Path(name).is_dir()
    if name == embedded.NAME:
        source, revision = str(embedded.local_dir()), embedded.revision()
    elif local:
        source = str(Path(name).resolve())
        revision = directory_digest(source, embedded.cache_root() / "digests")
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFound(f"'{name}' is not the embedded model ({embedded.NAME}), there is no directory"
                            f" {Path(name).expanduser().resolve()}, and it cannot be a hub id (org/name)")
    else:
        source, revision = name, ""
        _hub_reachable(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if not weights:
            return _without_weights(source, tokenizer, name, revision)
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype))
    except (OSError, ValueError, ImportError) as exc:
        what = "a local directory, but not a model nnct can load" if local else "a hub id"
        raise ModelNotFound(f"cannot load model '{name}' ({what}): {_one_line(exc)}") from None
    if not revision:
        revision = str(getattr(hf.config, "_commit_hash", "") or "")
    return Adapter(hf.to(device), tokenizer, name=name, revision=revision, device=device)


def _one_line(exc: BaseException) -> str:
    """The whole of an error's message on one line (transformers' span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _tried(name: str) -> str:
    return (f"'{name}' is not the embedded model ({embedded.NAME}), not a directory (none at {Path(name).resolve()}),"
            f" and as a hub id")


def _hub_reachable(name: str) -> None:
    """Fail within seconds when `name` can only be a hub id and no hub can be asked: the hub
    is unreachable, or HF_HUB_OFFLINE is set and the hub cache does not hold the model
    (transformers would otherwise retry for about a minute)."""
    import httpx
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE:
        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ModelNotFound(f"{_tried(name)} it is not in the hub cache, and HF_HUB_OFFLINE is set")
        return
    try:
        httpx.head(constants.ENDPOINT, timeout=5.0)
    except httpx.HTTPError as exc:
        raise ModelNotFound(f"{_tried(name)} the hub ({constants.ENDPOINT}) cannot be reached: {_one_line(exc)}") from None


def _without_weights(source: str, tokenizer, name: str, revision: str) -> Adapter:
    """The model on the meta device, named as a remote server knows it: its hub id, or for a
    local directory (a server on this machine, or one sharing its disk) the path itself."""
    from nnsight import TransformersModel

    if Path(source).is_dir():
        compat.name_model_directory(source)
    # The tokenizer is passed: nnsight cannot guess it for a model built without weights.
    nn = TransformersModel(source, task="text-generation", tokenizer=tokenizer)
    hf = compat.torch_module(nn)
    revision = revision or str(getattr(hf.config, "_commit_hash", "") or "")
    return Adapter(hf, tokenizer, name=name, revision=revision, device=REMOTE, nn=nn)


def wrap(model: Any = embedded.NAME, tokenizer=None, device: str = "cpu", dtype: str = "float32") -> Adapter:
    """An Adapter over whatever a notebook has: an Adapter (as is), an nnsight model (its
    module and tokenizer), a transformers model with its `tokenizer`, or a name for `load`."""
    if isinstance(model, Adapter):
        return model
    if isinstance(model, (str, Path)):
        return load(str(model), device=device, dtype=dtype)
    from nnsight import Envoy

    if isinstance(model, Envoy):  # an nnsight model (TransformersModel, LanguageModel, ...)
        if getattr(model, "dispatched", True) is False:
            model.dispatch()  # built lazily, on the meta device: its weights now
        hf, tok = compat.torch_module(model), tokenizer or getattr(model, "tokenizer", None)
        nn = model
    else:
        hf, tok, nn = model, tokenizer, None
    if tok is None:
        raise ConfigError(f"a {type(model).__name__} needs its tokenizer: pass tokenizer=...")
    if not hasattr(hf, "config"):
        raise ConfigError(f"cannot trace a {type(hf).__name__}: pass a transformers causal LM, an nnsight model or a name")
    name = str(getattr(hf.config, "_name_or_path", "") or type(hf).__name__)
    weight = next(hf.parameters())
    return Adapter(hf, tok, name=name, revision=str(getattr(hf.config, "_commit_hash", "") or ""),
                   device=weight.device.type, nn=nn)
