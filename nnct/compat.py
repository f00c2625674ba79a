"""Every use of another library's private internals, in one place, checked when a model loads.

nnct reaches past the public API of nnsight and transformers in a few places where no public
route exists: the torch module under an nnsight envoy, nnsight's cache of canonical model
ids, the remote backend's serialisation hook (to count bytes), the key/value cache's
per-layer tensors, and the keyword that hands a cache to a forward pass. A release that
moves one of them would otherwise give an AttributeError deep inside a trace, or worse, a
keyword silently ignored and a wrong number. `check` looks for each of them once per
process and raises `IncompatibleLibrary` naming the installed and the tested versions.

The cache keyword is the subtle one. transformers renamed `past_key_values` to `cache`
(5.2x; the old name is a deprecated alias until 5.40). nnsight 0.8.1 builds an attention mask
for a trace's inputs unless it sees `past_key_values`: a cache handed to a trace as `cache`
gets a mask over the new tokens alone, and the logits are wrong (measured: 3.8 off on a tiny
Llama). So traces keep the old name (`TRACE_CACHE_KEYWORD`, which a server's older
transformers takes too), with transformers' deprecation notice for it filtered out; plain
forward passes use the name the model's forward declares (`cache_keyword`).

The functions here are called inside nnsight sessions too, so they travel to a server with
the rest of nnct's code: they touch nothing but their arguments.
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings

from .errors import IncompatibleLibrary

# The versions the suite runs on (pyproject pins the same ranges).
TESTED = {"nnsight": "0.8.1", "transformers": "5.24"}

# The keyword of a cache handed to an nnsight trace (see the module's docstring).
TRACE_CACHE_KEYWORD = "past_key_values"
DEPRECATION_NOTICE = "`past_key_values`/`cache_params` are deprecated"


def torch_module(envoy):
    """The torch module an nnsight envoy (or model) wraps."""
    return envoy._module


def name_model_directory(path: str) -> None:
    """Tell nnsight that a local directory is its own canonical model id (it would ask a hub)."""
    import nnsight.modeling.huggingface as nhf

    nhf._ID_CACHE[path] = path


def cache_keyword(forward) -> str:
    """The keyword under which `forward` (a model's forward method, called directly, not in
    a trace) takes a key/value cache."""
    return "cache" if "cache" in inspect.signature(forward).parameters else TRACE_CACHE_KEYWORD


def output_cache(output, keyword: str):
    """The key/value cache a forward's output carries, under the name it was handed in."""
    return getattr(output, keyword)


def cache_layers(cache) -> list[tuple]:
    """(keys, values) per layer of a transformers cache, each [row, kv head, position, d_head]."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def counting_backend_class():
    """nnsight's remote backend, counting the bytes of a request and of its result (`sent`,
    `received`) through its private serialisation hook; the caller sets `display`."""
    from nnsight.intervention.backends.remote import RemoteBackend

    class CountingBackend(RemoteBackend):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.sent = self.received = 0

        def _serialize(self, tracer):
            blob = super()._serialize(tracer)
            self.sent += len(blob)
            return blob

        def finalize(self, content: bytes):
            self.received += len(content)
            return super().finalize(content)

    return CountingBackend


def _installed(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def _mask_left_to_the_model() -> bool:
    import nnsight.modeling.processing as processing

    return f'"{TRACE_CACHE_KEYWORD}"' in inspect.getsource(processing.encode_pretokenized)


def _id_cache() -> bool:
    import nnsight.modeling.huggingface as nhf

    return isinstance(getattr(nhf, "_ID_CACHE", None), dict)


def _serialize_hook() -> bool:
    from nnsight.intervention.backends.remote import RemoteBackend

    return callable(getattr(RemoteBackend, "_serialize", None)) and callable(getattr(RemoteBackend, "finalize", None))


def _cache_layers() -> bool:
    from transformers import DynamicCache

    return hasattr(DynamicCache(), "layers")


PROBES = {
    f"nnsight's encode_pretokenized leaving the attention mask to a model given {TRACE_CACHE_KEYWORD}": _mask_left_to_the_model,
    "nnsight.modeling.huggingface._ID_CACHE": _id_cache,
    "nnsight's RemoteBackend._serialize / finalize": _serialize_hook,
    "transformers' DynamicCache.layers": _cache_layers,
}


def _problems() -> list[str]:
    found = []
    for name, probe in PROBES.items():
        try:
            ok = probe()
        except (ImportError, AttributeError, OSError, TypeError):  # moved, renamed, or shipped without source
            ok = False
        if not ok:
            found.append(name)
    return found


class old_cache_keyword:  # noqa: N801 - used as a context manager, like warnings.catch_warnings
    """Around a trace handed a cache as TRACE_CACHE_KEYWORD: without transformers' notices
    that the name is deprecated (a FutureWarning per call, and a log line). A plain class,
    neither a generator nor a subclass: it runs inside requests on a server, where nnsight
    compiles nnct's functions again from their source, and neither a
    `contextlib.contextmanager` decorator nor a zero-argument `super()` survives that."""

    def __enter__(self):
        self.kept = warnings.catch_warnings()
        self.kept.__enter__()
        warnings.filterwarnings("ignore", message=f"`{TRACE_CACHE_KEYWORD}` is deprecated", category=FutureWarning)
        return self

    def __exit__(self, *exc):
        return self.kept.__exit__(*exc)


class _DropNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return DEPRECATION_NOTICE not in record.getMessage()


@functools.cache
def _library_problems() -> tuple[str, ...]:
    logging.getLogger("transformers.utils.generic").addFilter(_DropNotice())
    return tuple(_problems())


def check(envoy=None, module=None) -> None:
    """Raise IncompatibleLibrary when an internal nnct relies on is gone (the libraries'
    once per process; with a model, also that its envoy wraps `module` where nnct looks)."""
    missing = list(_library_problems())
    if envoy is not None and getattr(envoy, "_module", None) is not module:
        missing.append("nnsight's Envoy._module (the wrapped torch module)")
    if missing:
        installed = ", ".join(f"{p} {_installed(p)}" for p in TESTED)
        tested = ", ".join(f"{p} {v}" for p, v in TESTED.items())
        raise IncompatibleLibrary(f"this nnct relies on {'; '.join(missing)}, which the installed libraries lack"
                                  f" (installed: {installed}; tested: {tested}): install the tested versions")
