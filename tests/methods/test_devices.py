"""Every method in bfloat16, and no tensor made off the model's device.

No GPU runs these tests, so a tensor made on the CPU beside a model on a GPU would hide here:
each method runs with torch's tensor factories watched, and any call from nnct's own code
that names no device is a failure (a tensor meant for the host says device="cpu"). nnct 0.5
made the inputs of `edit`'s scores, prefixes and continuations on the CPU whatever the model's
device, and drew the prefixes' samples with a CPU generator from the model's tensors.
Each method also runs in bfloat16 end to end, the dtype a GPU user picks.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

import nnct
from conftest import write_jsonl
from nnct.exec import rome
from nnct.model import load

FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "linspace", "eye", "rand", "randn", "randint")
ROOT = str(Path(nnct.__file__).resolve().parent)
PAIRS = [
    {"id": "p1", "clean": "the Eiffel Tower is located in the city of", "corrupt": "the Vinson Massif is located in the city of",
     "target": "Paris", "alt": "Rome"},
    {"id": "p2", "clean": "the capital of France is", "corrupt": "the capital of Italy is", "target": "Paris", "alt": "Rome"},
]


@contextlib.contextmanager
def watched_factories(monkeypatch, root: str = ROOT):
    """Yield the list of `file:line torch.f` calls from code under `root` that named no device."""
    found = []

    def watch(name, original):
        def factory(*args, **kwargs):
            if "device" not in kwargs:
                frame = sys._getframe(1)
                if frame.f_code.co_filename.startswith(root):
                    found.append(f"{Path(frame.f_code.co_filename).relative_to(root)}:{frame.f_lineno} torch.{name}")
            return original(*args, **kwargs)
        return factory

    for name in FACTORIES:
        monkeypatch.setattr(torch, name, watch(name, getattr(torch, name)))
    yield found


def test_every_method_runs_in_bfloat16_with_tensors_on_the_model_s_device(tiny_model_dir, data_file, tmp_path, monkeypatch):
    from nnct.methods import circuit, edit, memorization
    from nnct.methods.run import RunConfig, execute

    monkeypatch.setenv("NNCT_CACHE", str(tmp_path / "cache"))
    # loaded before the watch: transformers' loading is not nnct's, and a watched loader
    # (its meta-device construction) gives other weights
    adapter = load(str(tiny_model_dir), dtype="bfloat16")
    model = dict(model=str(tiny_model_dir), dtype="bfloat16")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    texts = tmp_path / "text.txt"
    texts.write_text("the Eiffel Tower is located in the city of Paris France and the capital of Italy is Rome")
    with watched_factories(monkeypatch) as found:
        cubes = [execute(RunConfig(data=str(data_file), experiment="subject-noctx", samples=2, window=3, **model), adapter).cube,
                 execute(RunConfig(data=str(pairs), method="patch", components="hidden,head", **model), adapter).cube,
                 execute(RunConfig(data=str(data_file), experiment="subject-noctx", samples=2, estimate="atp",
                                   components="hidden", **model), adapter).cube]
        made = edit.run(edit.EditConfig(data=str(data_file), layer=1, covariance=False, max_examples=1,
                                        hparams=rome.Hparams(steps=2), **model), adapter)
        scores = memorization.score(memorization.ScoreConfig(texts=str(texts), out=str(tmp_path / "s.jsonl"), prefix=4,
                                                             continuation=3, stride=2, **model), adapter)
        memorization.pairs(memorization.PairsConfig(scores=str(tmp_path / "s.jsonl"), threshold=0.0, mode="dataset",
                                                    low=1.0, dtype="bfloat16"), adapter)
        found_circuit = circuit.find(circuit.FindConfig(pairs=str(pairs), out=str(tmp_path / "c.nc"), ig_steps=2, **model),
                                     adapter)
        checked = circuit.verify(circuit.VerifyConfig(circuit=str(tmp_path / "c.nc"), pairs=str(pairs), random=2,
                                                      edges=10, dtype="bfloat16"), adapter)
    assert not found, "tensors made without a device:\n" + "\n".join(sorted(set(found)))
    assert all(c.attrs["dtype"] == "bfloat16" for c in cubes)
    assert made.edits and made.attrs["dtype"] == "bfloat16"
    assert scores.scores and found_circuit.dataset.attrs["dtype"] == "bfloat16" and checked["dtype"] == "bfloat16"
    assert checked["faithfulness"] == checked["faithfulness"]  # a number, not NaN


def test_the_watch_sees_a_tensor_made_without_a_device(monkeypatch):
    """The check itself, watching this file: a factory without a device is caught, one with
    a device is not."""
    with watched_factories(monkeypatch, root=str(Path(__file__).resolve().parent)) as found:
        torch.zeros(3)
        torch.ones(2, device="cpu")
    assert len(found) == 1 and "torch.zeros" in found[0]
