"""The `nnct` command through click's CliRunner: the seed's option spellings and the new
ones, one-line errors with exit code 2, skipped records on stderr, and `nnct info`."""

from __future__ import annotations


import pytest

from conftest import RECORDS, invoke, write_jsonl
from nnct.results.cube import open_cube

METHOD_ATTRS = (
    "model", "model_revision", "nnct_version", "experiment", "prompt_format", "samples", "window", "noise_rule",
    "noise_level", "seed", "replace", "reverse_patching", "dtype", "backend", "device", "created",
)


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory, tiny_model_dir, data_file):
    """`nnct trace` under the seed's spellings: (result, output dir)."""
    out_dir = tmp_path_factory.mktemp("seed") / "results"
    result = invoke(
        "trace", "--model_name", tiny_model_dir, "--experiment_type", "0", "--data_path", data_file,
        "--output_dir", out_dir, "--samples", "2", "--window", "3", "--max_cf", "1", "--replace", "1",
        "--reverse_patching", "0", "--max_datapoints", "2", "--prompt_format", "{prompt}",
    )
    return result, out_dir


def test_trace_under_the_seed_spellings(seed_run, tiny_model_dir):
    result, out_dir = seed_run
    assert result.exit_code == 0, result.output
    cube = out_dir / "effects.nc"
    assert cube.is_file()
    assert f"wrote {cube}: 2 examples from 2 records" in result.stdout
    ds = open_cube(cube)
    a = ds.attrs
    assert a["experiment"] == "subject-noctx"
    assert a["prompt_format"] == "{prompt}"
    assert (a["samples"], a["window"], a["replace"], a["reverse_patching"]) == (2, 3, 1, 0)
    assert a["model"] == str(tiny_model_dir)
    assert ds.sizes["example"] == 2
    assert list(ds.example.values) == ["r1/fact", "r2/fact"]
    assert list(ds.component.values) == ["hidden", "mlp", "attn"]


def test_trace_under_the_new_spellings_with_flags(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "new.nc"
    result = invoke(
        "trace", "--model", tiny_model_dir, "--experiment", "subject", "--data", data_file, "--out", out,
        "--replace", "--reverse-patching", "--max-examples", "1", "--components", "hidden",
        "--samples", "2", "--window", "3", "--quiet",
    )
    assert result.exit_code == 0, result.output
    ds = open_cube(out)
    a = ds.attrs
    assert a["experiment"] == "subject"
    assert a["prompt_format"] == "C: {context} {prompt}"
    assert (a["replace"], a["reverse_patching"]) == (1, 1)  # flags without values mean 1
    assert (a["samples"], a["window"]) == (2, 3)
    assert list(ds.component.values) == ["hidden"]
    assert list(ds.example.values) == ["r1/fact", "r1/cf1"]


def test_heads_and_severed_paths_from_the_command_line(tmp_path, tiny_model_dir, data_file):
    """trace -> summarize -> plot with the finer components: their variables, the strongest
    heads, the heads and severed-path figures."""
    out = tmp_path / "heads.nc"
    result = invoke("trace", "--model", tiny_model_dir, "--experiment", "subject-noctx", "--data", data_file, "--out", out,
                    "--components", "head,hidden,hidden-sever-mlp,head_all_pos", "--samples", "2", "--window", "1",
                    "--max-examples", "2", "--quiet")
    assert result.exit_code == 0, result.output
    ds = open_cube(out)
    assert list(ds.component.values) == ["hidden", "hidden-sever-mlp"]
    assert ds.p_restored_head.sizes["head"] == 4 and ds.p_restored_head_all_pos.dims == ("example", "layer", "head", "answer")
    assert not ds.p_restored_head.isel(token=slice(0, 3)).isnull().any()
    summary = invoke("summarize", out)
    assert summary.exit_code == 0 and "strongest heads" in summary.output and "all positions" in summary.output
    figs = tmp_path / "figs"
    drawn = invoke("plot", out, "-o", figs, "--examples", "1")
    assert drawn.exit_code == 0, drawn.output
    assert (figs / "heads.png").is_file() and (figs / "severed.png").is_file()
    bad = invoke("trace", "--model", tiny_model_dir, "--data", data_file, "--out", tmp_path / "x.nc", "--components", "heads")
    assert bad.exit_code == 2 and "unknown component(s) ['heads']" in bad.output


def test_experiment_type_2_is_object(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "object.nc"
    result = invoke(
        "trace", "--model", tiny_model_dir, "--experiment-type", "2", "--data", data_file, "--out", out,
        "--max-examples", "1", "--components", "hidden", "--samples", "1", "--quiet",
    )
    assert result.exit_code == 0, result.output
    ds = open_cube(out)
    assert ds.attrs["experiment"] == "object"
    # The object experiment corrupts the object mention in the passage: "Paris", then "Rome".
    spans = [
        "".join(ds.token_str.values[i, int(ds.span_start[i]) : int(ds.span_end[i])]) for i in range(ds.sizes["example"])
    ]
    assert spans == ["Paris", "Rome"]


ERRORS = {
    "missing data file": (lambda d, m, t: ["--data", t / "nope.jsonl", "--out", t / "x.nc"], "nope.jsonl"),
    "unknown component": (lambda d, m, t: ["--data", d, "--out", t / "x.nc", "--components", "hidden,resid"], "resid"),
    "out not nc": (lambda d, m, t: ["--data", d, "--out", t / "x.txt"], "x.txt"),
    "out and output-dir": (lambda d, m, t: ["--data", d, "--out", t / "x.nc", "--output-dir", t], "--out"),
    "neither out nor output-dir": (lambda d, m, t: ["--data", d], "--out"),
    "unknown experiment": (lambda d, m, t: ["--data", d, "--out", t / "x.nc", "--experiment", "bogus"], "bogus"),
    "bad noise level": (lambda d, m, t: ["--data", d, "--out", t / "x.nc", "--noise-level", "loud"], "loud"),
    "no samples": (lambda d, m, t: ["--data", d, "--out", t / "x.nc", "--samples", "0"], "--samples"),
}


@pytest.mark.parametrize("case", list(ERRORS) + ["missing model directory"])
def test_errors_are_one_line_with_exit_code_2(case, tmp_path, tiny_model_dir, data_file):
    if case == "missing model directory":
        model, args, needle = tmp_path / "no-model", ["--data", data_file, "--out", tmp_path / "x.nc"], "no-model"
    else:
        build, needle = ERRORS[case]
        model, args = tiny_model_dir, build(data_file, tiny_model_dir, tmp_path)
    result = invoke("trace", "--model", model, *args, "--samples" if "--samples" not in args else "--seed", "1", "-q")
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not an escaped exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]], result.stderr  # one message, the last thing said
    assert lines[-1].startswith("nnct: error: ")
    assert needle in lines[-1]
    assert not (tmp_path / "x.nc").exists() and not (tmp_path / "x.nc.partial").exists()


def test_interruption_exits_130_and_says_resume(tmp_path, data_file, monkeypatch):
    import nnct.methods.run

    def interrupted(cfg, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(nnct.methods.run, "execute", interrupted)
    out = tmp_path / "x.nc"
    result = invoke("trace", "--data", data_file, "--out", out, "-q")
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("nnct: error: interrupted")
    assert f"{out}.partial" in line and "--resume" in line


def test_bad_line_is_reported_and_skipped(tmp_path, tiny_model_dir):
    no_subj = {k: v for k, v in RECORDS[1].items() if k != "subj"}
    data = write_jsonl(tmp_path / "mixed.jsonl", [RECORDS[0], no_subj, RECORDS[2]])
    out = tmp_path / "mixed.nc"
    result = invoke(
        "trace", "--model", tiny_model_dir, "--experiment", "subject-noctx", "--data", data, "--out", out,
        "--components", "hidden", "--samples", "1", "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert f"skipped {data}:2: field 'subj'" in result.stderr
    assert "1 skipped" in result.stdout
    assert list(open_cube(out).example.values) == ["r1/fact", "r3/fact"]


def test_info_prints_attrs_dims_and_examples(seed_run):
    _, out_dir = seed_run
    cube = out_dir / "effects.nc"
    assert cube.is_file()
    result = invoke("info", cube)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "attrs:" in text
    for name in METHOD_ATTRS:
        assert f"  {name} = " in text, name
    assert "  experiment = subject-noctx" in text
    dims = [line for line in text.splitlines() if line.startswith("dims:")]
    assert len(dims) == 1
    for dim in ("example=2", "layer=4", "component=3", "answer=2", "token="):
        assert dim in dims[0]
    assert "r1/fact" in text and "r2/fact" in text


def test_info_on_a_file_that_is_no_cube(tmp_path):
    bogus = tmp_path / "bogus.nc"
    bogus.write_text("not a cube\n")
    result = invoke("info", bogus)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith("nnct: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
