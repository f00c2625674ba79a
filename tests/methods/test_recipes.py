"""The memory-study recipe end to end on the tiny model: one command leaves the answers
table, four cubes made from their definitions, their summaries and figures, and the study's
tables (analysis/memory_study.py) whose numbers agree with the files beside them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from nnct.results.cube import open_cube

JUST = shutil.which("just") or str(Path(sys.executable).parent / "just")


@pytest.mark.skipif(not Path(JUST).exists(), reason="just is not installed (setup.sh installs it)")
def test_memory_study_recipe(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "study"
    cmd = [JUST, f"model={tiny_model_dir}", f"data={data_file}", "memory-study", "3", str(out),
           "--samples 2 --window 2 --quiet", "--components hidden"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    answers = pd.read_csv(out / "answers.csv")
    assert len(answers) == 3 + 3 + 2 + 2 + 1  # none + fact + every counterfactual of the three records
    for name in ("subject-noctx", "subject", "object", "relation"):
        ds = open_cube(out / f"{name}.nc")
        lean = ", components=hidden" if name in ("object", "relation") else ""
        assert ds.attrs["definition"] == f"{name} v1 (samples=2, window=2{lean})"  # the overrides are named
        assert ds.attrs["samples"] == 2
        assert ds.attrs["components"] == ("hidden" if name in ("object", "relation") else "hidden,mlp,attn")
        for part in ([name] if name == "subject-noctx" else [f"{name}.fact", f"{name}.cf"]):
            assert (out / f"{part}.summary.nc").exists() and (out / f"{part}.summary.csv").exists()
            assert (out / "figures" / part / "average.pdf").exists()
        if name != "subject-noctx":
            assert open_cube(out / f"{name}.cf.summary.nc").attrs["variant"] == "cf"
    # the clean runs of the traces and of `nnct answers` are the same forwards
    subject = open_cube(out / "subject.nc")
    fact = answers[answers.condition == "fact"].set_index("record_id")
    for ex in subject.example.values:
        rid, variant = str(ex).split("/")
        row = answers[(answers.record_id == rid) & (answers.condition == variant)].iloc[0]
        assert float(subject.p_clean.sel(example=ex, answer="target")) == pytest.approx(row.p_target, abs=1e-5)
    assert len(fact) == 3
    text = (out / "memory_study.txt").read_text()
    cf1 = answers[answers.condition == "cf1"]
    assert f"context wins {(cf1.source == 'context').mean():.0%} of {len(cf1)}" in text
    assert "MLP against attention" in text and "subject_last" in text
    assert (out / "figures" / "context_vs_memory.pdf").exists()
    # section 3 splits the cf examples by winner: its counts are the cube's
    obj = open_cube(out / "object.nc")
    cf_examples = [str(v).startswith("cf") for v in obj.variant.values]
    wins = sum(c and float(obj.p_clean.values[i, 0]) > float(obj.p_clean.values[i, 1]) for i, c in enumerate(cf_examples))
    line = next(x for x in text.splitlines() if x.startswith("object") and "memory wins" in x)
    assert line.split()[5] == str(sum(cf_examples) - wins)
