"""What every output says about how it was made: nnct's version, the model, the digest of its
weights (`model.weights`; a hub model's commit), where and how it ran, when, and the
method's settings.

Every writer (the cube, the circuit file, the edits file, the scores file) takes these
attrs from here, so that a result found on disk months later can be reproduced, and a
resumed run or a cache can refuse other weights. NetCDF attrs hold strings and numbers: the
settings are one JSON text.
"""

from __future__ import annotations

import datetime as _dt
import json

from .. import __version__


def created() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(adapter, backend: str, settings: dict | None = None, when: str | None = None) -> dict:
    """The attrs every output carries. `backend`: "local", nnsight's simulation, or the host
    (the device and dtype of a model on a server are the server's: "remote" here)."""
    out = {"nnct_version": __version__, "model": adapter.name, "model_revision": adapter.revision,
           "device": adapter.device, "dtype": adapter.dtype, "backend": backend, "created": when or created()}
    if settings is not None:
        out["settings"] = json.dumps(settings, sort_keys=True, default=str)
    return out
