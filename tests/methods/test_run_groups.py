"""A run's examples many per forward: consecutive examples of one group key run as one
group, an example of another length between them alone, and the cube, the progress counts
and a resumed run are those of one example at a time."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SMALL, write_jsonl
from examples import MIXED_PAIRS as PAIRS
from nnct.exec.engine import Engine
from nnct.methods.run import Progress, RunConfig, _Store, execute

class Counting(Progress):
    def start(self, total_examples, total_cells, done_examples, done_cells):
        self.total, self.examples, self.counted = total_cells, [], done_cells

    def example(self, example_id):
        self.examples.append(example_id)

    def cells(self, n):
        self.counted += n


def run(model_dir, data, out, progress=None, **kw):
    return execute(RunConfig(data=str(data), out=str(out), method="patch", model=str(model_dir), **{**SMALL, **kw}),
                   progress=progress)


def assert_same_cubes(got, want):
    for name, value in want.data_vars.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[name].values, value.values, rtol=1e-5, atol=5e-5 if "logit" in name else 1e-6,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(got[name].values, value.values, err_msg=name)


def test_a_run_groups_examples_and_writes_the_cube_of_one_at_a_time(tiny_model_dir, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    sizes, real = [], Engine.trace_group

    def spy(self, jobs, on_batch=None):
        sizes.append(len(jobs))
        return real(self, jobs, on_batch)

    monkeypatch.setattr(Engine, "trace_group", spy)
    progress = Counting()
    grouped = run(tiny_model_dir, data, tmp_path / "grouped.nc", progress).cube
    assert sizes == [2, 1, 3]  # p3 is shorter: alone, between two groups
    assert progress.examples == [f"p{k}/pair" for k in range(1, 7)] and progress.counted == progress.total
    monkeypatch.setattr(Engine, "group_size", lambda self, key: 1)
    alone = run(tiny_model_dir, data, tmp_path / "alone.nc").cube
    assert sizes == [2, 1, 3] + [1] * 6
    assert_same_cubes(grouped, alone)


def test_a_resumed_run_reruns_a_part_done_group_whole(tiny_model_dir, tmp_path, monkeypatch):
    """An example stored before the run stopped is not counted again, and the others of its
    group get the bits of the group they had in the first run."""
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[3:])
    out = tmp_path / "resumed.nc"
    whole = run(tiny_model_dir, data, tmp_path / "whole.nc").cube
    put = _Store.put

    def put_one(self, k, row):  # the run stops with only the group's first example stored
        put(self, k, row)
        raise KeyboardInterrupt

    monkeypatch.setattr(_Store, "put", put_one)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model_dir, data, out)
    monkeypatch.setattr(_Store, "put", put)
    progress = Counting()
    resumed = run(tiny_model_dir, data, out, progress, resume=True).cube
    assert progress.examples == ["p5/pair", "p6/pair"] and progress.counted == progress.total
    assert_same_cubes(resumed, whole)
