"""Experiment definitions: the repository's own load and name what docs/method.md says; bad
files name the file and the key; on the command line a definition gives the defaults and
options override them, and the cube records which definition made it."""

from __future__ import annotations

from dataclasses import fields

import pytest
from click.testing import CliRunner

from conftest import ROOT
from nnct.cli import main
from nnct.results.cube import open_cube
from nnct.methods.definition import TRACE_KEYS, load
from nnct.methods.run import RunConfig
from nnct.errors import ConfigError
from nnct.inputs.prompts import experiment

EXPERIMENTS = ROOT / "experiments"


@pytest.mark.parametrize("name", ["subject-noctx", "subject", "object", "relation"])
def test_repository_definitions(name):
    d = load(EXPERIMENTS / f"{name}.toml")
    assert d.name == name and d.version >= 1 and d.label == f"{name} v{d.version}"
    exp = experiment(d.trace["experiment"])
    assert exp.name == name
    assert d.trace["prompt_format"] == exp.prompt_format  # docs/method.md's default format
    assert (d.trace["samples"], d.trace["window"], d.trace["noise_level"]) == (10, 10, "s3")  # ROME's settings
    assert d.trace.get("max_cf", 0) == (1 if exp.context else 0)


def test_trace_keys_are_run_settings_and_noise_may_be_a_number(tmp_path):
    assert set(TRACE_KEYS) <= {f.name for f in fields(RunConfig)}
    path = tmp_path / "d.toml"
    path.write_text('name = "x"\nversion = 1\n[trace]\nexperiment = "subject"\nnoise_level = 0.25\n')
    assert load(path).trace["noise_level"] == "0.25"


@pytest.mark.parametrize("text, message", [
    ('name = "x"\nversion = 1\n[trace]\nexperiment = "subject"\nsample = 3\n', "key 'sample' is not a setting"),
    ('name = "x"\nversion = 1\n[trace]\nexperiment = "subject"\nsamples = "3"\n', "key 'samples': expected int"),
    ('name = "x"\nversion = 1\n[trace]\nsamples = 3\n', "at least 'experiment'"),
    ('name = "x"\nversion = 0\n[trace]\nexperiment = "subject"\n', "key 'version'"),
    ('version = 1\n[trace]\nexperiment = "subject"\n', "key 'name'"),
    ('name = "x"\nversion = 1\nmodel = "m"\n[trace]\nexperiment = "subject"\n', "unknown key"),
    ('name = "x\nversion = 1\n', "not valid TOML"),
])
def test_bad_definitions_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)


def test_definition_gives_defaults_and_options_override(tmp_path, tiny_model_dir, data_file):
    definition = tmp_path / "obj.toml"
    definition.write_text('name = "obj-test"\nversion = 3\n[trace]\nexperiment = "object"\nmax_cf = 2\n'
                          'components = "hidden"\nsamples = 4\nwindow = 3\nreplace = true\n')
    out = tmp_path / "c.nc"
    result = CliRunner().invoke(main, ["trace", "--model", str(tiny_model_dir), "--data", str(data_file), "--out", str(out),
                                       "--definition", str(definition), "--samples", "2", "-q"])
    assert result.exit_code == 0, result.output
    ds = open_cube(out)
    assert ds.attrs["definition"] == "obj-test v3 (samples=2)"  # what the command line changed is named
    assert ds.attrs["experiment"] == "object" and ds.attrs["components"] == "hidden" and ds.attrs["window"] == 3
    assert ds.attrs["replace"] == 1 and ds.attrs["max_cf"] == 2
    assert ds.attrs["samples"] == 2  # the command line wins
    assert set(str(v) for v in ds.variant.values) == {"fact", "cf1", "cf2"}


def test_bad_definition_on_the_command_line_is_one_line(tmp_path, data_file):
    result = CliRunner().invoke(main, ["trace", "--data", str(data_file), "--out", str(tmp_path / "c.nc"),
                                       "--definition", str(tmp_path / "none.toml")])
    assert result.exit_code == 2
    assert "none.toml: cannot read the definition" in result.output
