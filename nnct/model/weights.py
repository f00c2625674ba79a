"""What a model's weights are: a digest of their files, so that every output can say which
weights made it and a resumed run or a cache can tell other weights from its own.

A local directory's weights are its `*.safetensors`, `*.bin`, `*.pt`, `*.pth` and `*.gguf`
files (the embedded model's, the GGUF file it is converted from). Their digest is the
SHA-256 of each file's name and SHA-256, in name order, written `sha256:` and its first 16
hex digits. Hashing reads every byte (a 135M model: about a second; an 8B one: about a
minute), so each file's hash is cached under the nnct cache, keyed by its resolved path and
kept while its size and modification time are unchanged: a file rewritten in place gets a
new mtime and is read again. A hub model's revision is its commit instead (`loading`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ModelNotFound, ResumeMismatch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
PREFIX = "sha256:"


def _file_sha256(path: Path, cache: Path) -> str:
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    entry = cache / (hashlib.sha256(str(path).encode()).hexdigest() + ".json")
    try:
        stored = json.loads(entry.read_text())
        if {k: stored.get(k) for k in key} == key:
            return stored["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    try:  # a read-only cache only costs the next run the hashing
        cache.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**key, "path": str(path), "sha256": digest}))
        os.replace(tmp, entry)
    except OSError:
        pass
    return digest


def digest(files: list[Path], cache: Path) -> str:
    """The digest of these weight files (see the module's docstring)."""
    files = sorted((Path(f).resolve() for f in files), key=lambda p: p.name)
    if not files:
        raise ModelNotFound("no weight files to take a digest of")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name} {_file_sha256(f, cache)}\n".encode())
    return PREFIX + h.hexdigest()[:16]


def directory_digest(directory: str | Path, cache: Path) -> str:
    """The digest of a model directory's weight files; "" for a directory without any (which
    is no model: loading it fails and says so)."""
    found = [p for p in Path(directory).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    return digest(found, cache) if found else ""


def same_weights(stored: str, now: str, where: str) -> None:
    """ResumeMismatch naming both digests when an output's weights are not the model's now.
    A stored revision that is empty was made before nnct took digests, and is accepted."""
    if stored and stored != now:
        raise ResumeMismatch(f"{where}: made with other weights (model revision {stored}; the model now is {now}):"
                             " give another output, or the model it was made with")
