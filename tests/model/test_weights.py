"""The weights' digest: a local directory's changes with any byte of its weights, is cached by
size and mtime, and a resumed run refuses other weights naming both digests."""

import hashlib
import os

import pytest
import torch

from nnct.errors import ResumeMismatch
from nnct.model import weights


def test_the_digest_is_the_sha256_of_names_and_file_hashes(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "b.safetensors").write_bytes(b"bbbb")
    (model / "a.bin").write_bytes(b"aa")
    (model / "config.json").write_text("{}")  # not a weight file
    by_hand = hashlib.sha256(f"a.bin {hashlib.sha256(b'aa').hexdigest()}\n"
                             f"b.safetensors {hashlib.sha256(b'bbbb').hexdigest()}\n".encode()).hexdigest()
    assert weights.directory_digest(model, tmp_path / "cache") == "sha256:" + by_hand[:16]
    assert weights.directory_digest(tmp_path / "cache", tmp_path / "cache2") == ""


def test_one_changed_byte_changes_it_and_the_cache_follows_size_and_mtime(tmp_path):
    model, cache = tmp_path / "model", tmp_path / "cache"
    model.mkdir()
    f = model / "model.safetensors"
    f.write_bytes(b"\x00" * 1000)
    before = weights.directory_digest(model, cache)
    st = f.stat()
    f.write_bytes(b"\x00" * 500 + b"\x01" + b"\x00" * 499)
    # same size, and the old mtime put back: the cache answers without reading the file
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.directory_digest(model, cache) == before
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    after = weights.directory_digest(model, cache)
    assert after != before


def test_resume_refuses_a_model_directory_with_one_weight_changed(tmp_path, monkeypatch):
    """A local model's revision was always "local" in nnct 0.5: a run made with other weights
    resumed silently."""
    from conftest import make_adapter
    from nnct.methods.run import RunConfig, execute

    monkeypatch.setenv("NNCT_CACHE", str(tmp_path / "nnct-cache"))
    adapter = make_adapter("llama")
    model_dir = tmp_path / "tiny"
    adapter.hf.save_pretrained(model_dir)
    adapter.tokenizer.save_pretrained(model_dir)
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"clean": "the Eiffel Tower is in the city of", "corrupt": "the Vinson Massif is in the city of",'
                    ' "target": "Paris", "alt": "Rome"}\n')
    out = tmp_path / "run.nc"
    cfg = RunConfig(data=str(data), out=str(out), method="patch", model=str(model_dir), components="hidden")
    first = execute(cfg)
    stored = first.cube.attrs["model_revision"]
    assert stored.startswith("sha256:")
    out.unlink()
    # a stopped run: its partial directory holds run.json and no example yet
    from nnct.methods import run as run_lib

    calls = []

    def stop(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_lib, "_row", stop)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg)
    monkeypatch.undo()
    monkeypatch.setenv("NNCT_CACHE", str(tmp_path / "nnct-cache"))
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    name = next(iter(tensors))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += torch.tensor(1.0, dtype=tensors[name].dtype)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ResumeMismatch) as err:
        execute(RunConfig(**{**cfg.__dict__, "resume": True}))
    now = weights.directory_digest(model_dir, tmp_path / "nnct-cache" / "digests")
    assert stored in str(err.value) and now in str(err.value) and now != stored
