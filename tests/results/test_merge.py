"""Shards and merge: the shards of a run merge into the cube the whole run writes, and
cubes that are not the shards of one run are refused, naming why."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from conftest import config
from nnct.cli import main
from nnct.results.cube import open_cube, write
from nnct.errors import ConfigError
from nnct.results.merge import merge
from nnct.methods.run import parse_shard, execute

PROVENANCE = ("created", "shard", "merged_shards")


def comparable(ds):
    ds = ds.copy()
    ds.attrs = {k: v for k, v in ds.attrs.items() if k not in PROVENANCE}
    return ds


@pytest.fixture(scope="module")
def shards(tiny_model_dir, data_file, tmp_path_factory):
    """The whole run and its three shards, on the tiny model (4 records, so shard 0 has two)."""
    d = tmp_path_factory.mktemp("shards")
    kw = dict(experiment="subject", max_cf=1, components="hidden")
    execute(config(tiny_model_dir, data_file, d / "whole.nc", **kw))
    paths = []
    for i in range(3):
        paths.append(d / f"s{i}.nc")
        execute(config(tiny_model_dir, data_file, paths[-1], shard=f"{i}/3", **kw))
    return d / "whole.nc", paths


def test_shards_take_every_nth_record(shards):
    whole, paths = shards
    records = list(dict.fromkeys(str(r) for r in open_cube(whole).record_id.values))
    for i, p in enumerate(paths):
        ds = open_cube(p)
        assert list(dict.fromkeys(str(r) for r in ds.record_id.values)) == records[i::3]
        assert ds.attrs["shard"] == f"{i}/3"
        # the noise level is the whole data set's, not the shard's
        assert ds.attrs["noise_level"] == open_cube(whole).attrs["noise_level"]


def test_merged_shards_equal_the_whole_run(shards, tmp_path):
    whole, paths = shards
    out = tmp_path / "merged.nc"
    write(merge(reversed(paths)), out)
    merged, expected = open_cube(out), open_cube(whole)
    assert merged.attrs["merged_shards"] == 3
    xr.testing.assert_identical(comparable(merged), comparable(expected))


def test_merged_cube_opens_lazily(shards, tmp_path):
    _, paths = shards
    out = tmp_path / "merged.nc"
    write(merge(paths), out)
    lazy = open_cube(out, chunks={"example": 2})
    assert lazy.p_restored.chunks is not None
    np.testing.assert_array_equal(lazy.p_restored.values, open_cube(out).p_restored.values)


def test_merge_refuses_other_settings(shards, tiny_model_dir, data_file, tmp_path):
    _, paths = shards
    other = tmp_path / "other.nc"
    execute(config(tiny_model_dir, data_file, other, experiment="subject", max_cf=1, components="hidden", samples=3, shard="2/3"))
    with pytest.raises(ConfigError, match="not a shard of the same run.*samples = 3, not 2"):
        merge([paths[0], paths[1], other])


def test_merge_refuses_missing_duplicate_and_unsharded(shards):
    whole, paths = shards
    with pytest.raises(ConfigError, match="shard.* 2/3 missing"):
        merge(paths[:2])
    with pytest.raises(ConfigError, match="given twice"):
        merge([paths[0], paths[1], paths[1]])
    with pytest.raises(ConfigError, match="not a shard"):
        merge([whole, paths[0]])


def test_merge_cli(shards, tmp_path):
    _, paths = shards
    out = tmp_path / "m.nc"
    result = CliRunner().invoke(main, ["merge", *map(str, paths), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "from 3 shards" in result.output
    bad = CliRunner().invoke(main, ["merge", str(paths[0]), str(paths[1]), "-o", str(out)])
    assert bad.exit_code == 2 and "missing" in bad.output


def test_each_problem_is_reported_by_one_shard(tiny_model_dir, tmp_path):
    from conftest import config, RECORDS, write_jsonl
    from nnct.methods.run import Progress

    bad_record = dict(RECORDS[1], subj="Mont Blanc")  # not in its prompt: a problem found while preparing
    lines = [RECORDS[0], "{not json", bad_record, RECORDS[2], RECORDS[0] | {"id": "r4"}]
    data = write_jsonl(tmp_path / "d.jsonl", lines)

    class Seen(Progress):
        lines: list = []

        def skipped(self, problems):  # the lines that are no record, then the records refused later
            self.lines = self.lines + [p.line for p in problems]

    seen = {}
    for i in range(2):
        progress = Seen()
        execute(config(tiny_model_dir, data, tmp_path / f"s{i}.nc", components="hidden", shard=f"{i}/2"), progress=progress)
        seen[i] = progress.lines
    # records (by position): line 1 -> 0, line 3 -> 1, line 4 -> 0, line 5 -> 1; line 2 is no record: shard 0's
    assert seen == {0: [2], 1: [3]}


def test_more_shards_than_records_is_refused(tiny_model_dir, data_file, tmp_path):
    with pytest.raises(ConfigError, match="only 3 records"):
        execute(config(tiny_model_dir, data_file, tmp_path / "s.nc", components="hidden", shard="3/4"))


@pytest.mark.parametrize("text", ["3/3", "-1/2", "a/b", "1", "0/0"])
def test_bad_shard_specs(text):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)
