"""The engine inside an nnsight session sent through `remote="local"` (nnsight serialises the
session as a real request would, then runs it here): the same numbers as the local engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import make_adapter
from test_engine import TOL, prepared
from nnct.engine import Engine, Settings


@pytest.mark.parametrize("family, reverse", [("llama", False), ("gptj", False), ("qwen2", True)])
def test_remote_local_session_gives_the_local_numbers(family, reverse, one_torch_thread):
    adapter = make_adapter(family)
    prep = prepared(adapter)
    settings = Settings(samples=3, window=3, reverse=reverse, batch_rows=9)
    here = Engine(adapter, settings).trace(prep)
    seen = []
    there = Engine(adapter, dataclasses.replace(settings, remote="local")).trace(prep, on_batch=seen.append)
    for field in ("p_clean", "p_corrupt", "p_restored"):
        np.testing.assert_allclose(getattr(there, field), getattr(here, field), atol=TOL, err_msg=field)
    assert there.clean_top1 == here.clean_top1
    assert sum(seen) == here.p_restored.shape[0] * here.p_restored.shape[1] * here.p_restored.shape[2]


def test_the_request_carries_no_weights(monkeypatch, one_torch_thread):
    """The session is serialised with the engine in it: only envoys may travel by reference.
    A model with 16 MiB of MLP weights must still make a request of a few hundred KiB."""
    from nnsight.schema.request import RequestModel

    sizes, serialize = [], RequestModel.serialize

    def counting(tracer, *args, **kwargs):
        blob = serialize(tracer, *args, **kwargs)
        sizes.append(len(blob))
        return blob

    monkeypatch.setattr(RequestModel, "serialize", staticmethod(counting))
    adapter = make_adapter("llama", intermediate_size=16384)
    weights = sum(p.numel() * p.element_size() for p in adapter.hf.parameters())
    Engine(adapter, Settings(components=("hidden",), samples=2, window=3, remote="local")).trace(prepared(adapter, samples=2))
    assert len(sizes) == 1  # one request for the example
    assert weights > 16 << 20 and sizes[0] < 1 << 20


def test_run_with_remote_local_writes_the_local_cube(tiny_model_dir, data_file, tmp_path, one_torch_thread):
    import xarray as xr

    from test_run import config
    from nnct.cube import open_cube
    from nnct.run import trace

    kw = dict(experiment="subject", max_cf=1, components="hidden,attn", batch_rows=6)
    trace(config(tiny_model_dir, data_file, tmp_path / "here.nc", **kw))
    trace(config(tiny_model_dir, data_file, tmp_path / "there.nc", remote="local", **kw))
    here, there = open_cube(tmp_path / "here.nc"), open_cube(tmp_path / "there.nc")
    assert there.attrs["backend"] == "nnsight remote=local" and here.attrs["backend"] == "local"
    np.testing.assert_allclose(there.p_restored.values, here.p_restored.values, atol=TOL)
    xr.testing.assert_equal(there.drop_vars(["p_restored", "p_clean", "p_corrupt"]), here.drop_vars(["p_restored", "p_clean", "p_corrupt"]))


def test_other_remotes_are_not_built_yet(tiny_model_dir, data_file, tmp_path):
    from test_run import config
    from nnct.errors import ConfigError
    from nnct.run import trace

    with pytest.raises(ConfigError, match="only 'local'"):
        trace(config(tiny_model_dir, data_file, tmp_path / "c.nc", remote="http://127.0.0.1:8001"))
