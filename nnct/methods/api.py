"""The Python API for notebooks: `trace`, `patch`, `attribute` and `ablate` return the cube
as an xarray Dataset; every one of them takes `readout=` (names, or callables
`logits -> values`, run here only).

Both take a model in any form a notebook has it (a name, a local directory, a loaded
transformers model with its tokenizer, an nnsight model, an nnct Adapter) and their data in
any form (a JSONL path, dicts, or one prompt given by keywords), and run through the same
`methods.run.execute` as the command line: the numbers are the same, a bad record is
reported (as a Python warning, unless `progress` hears it) and skipped, and with `out=` the
run is kept on disk as it goes and resumable (`resume=True`). Settings are `RunConfig`'s
field names (`batch_size` is accepted for `batch_rows`).

    import nnct
    ds = nnct.patch(clean="The Eiffel Tower is located in the city of",
                    corrupt="The Louvre Museum is located in the city of", target="Paris", alt="London")
    ds = nnct.trace("smollm2-135m", "facts.jsonl", experiment="subject-noctx", samples=3)
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import fields, replace
from pathlib import Path

from ..errors import ConfigError
from .run import Progress, RunConfig, execute

_KNOWN = {f.name for f in fields(RunConfig)} - {"data", "out", "method", "model", "resume"}


class _Warn(Progress):
    def skipped(self, problems):
        for problem in problems:
            warnings.warn(f"skipped {problem}", stacklevel=_outside())


def _outside() -> int:
    """The stack level, seen from the caller, of the first frame outside nnct: where a
    warning points (the notebook's line)."""
    root = str(Path(__file__).resolve().parents[1])
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(root):
        frame, level = frame.f_back, level + 1
    return level


def _config(method: str, model, data, out, resume: bool, settings: dict) -> tuple[RunConfig, object]:
    if "batch_size" in settings:
        settings["batch_rows"] = settings.pop("batch_size")
    unknown = sorted(set(settings) - _KNOWN)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN | {'batch_size'}))}")
    name = model if isinstance(model, (str, Path)) else None
    path = str(data) if isinstance(data, (str, Path)) else None
    cfg = RunConfig(data=path, out=str(out) if out else None, method=method, model=str(name or getattr(model, "name", "")),
                    resume=resume, **settings)
    return cfg, None if path else (list(data) if not isinstance(data, dict) else [data])


def _run(cfg: RunConfig, model, items, progress, tokenizer):
    from ..model.loading import wrap

    adapter = None
    if not isinstance(model, (str, Path)):
        adapter = wrap(model, tokenizer)
        cfg = replace(cfg, model=adapter.name, device=adapter.device)
    return execute(cfg, adapter, progress or _Warn(), items).cube


def trace(model="smollm2-135m", data=None, *, prompt: str | None = None, subject: str | None = None,
          target: str | None = None, alt: str | None = None, out=None, resume: bool = False, progress: Progress | None = None,
          tokenizer=None, **settings):
    """ROME's causal tracing of records (a JSONL path or dicts in docs/method.md's schema), or of
    one `prompt` with its `subject`, `target` and `alt` (experiment subject-noctx), into the
    effect cube. `corruption="substitute"` corrupts by another subject or object instead of
    noise."""
    if prompt is not None:
        if data is not None or None in (subject, target, alt):
            raise ConfigError("trace(prompt=...) takes subject, target and alt, and no data")
        data = [{"id": "prompt", "subj": subject, "obj": target, "obj_cf": [alt], "prompt_wo_ctx": prompt}]
        settings.setdefault("experiment", "subject-noctx")
    if data is None:
        raise ConfigError("trace needs data (a JSONL path or records) or prompt=...")
    cfg, items = _config("trace", model, data, out, resume, settings)
    return _run(cfg, model, items, progress, tokenizer)


def patch(model="smollm2-135m", pairs=None, *, clean: str | None = None, corrupt: str | None = None,
          target: str | None = None, alt: str | None = None, out=None, resume: bool = False, progress: Progress | None = None,
          tokenizer=None, **settings):
    """Activation patching between two prompts: every cell of the clean run written into the
    corrupted one (reverse: the other way), for pairs (a JSONL path, or dicts with clean,
    corrupt, target, alt and an optional id) or one pair given by keywords.

    `path=True`: path patching instead (`methods.path`): every head's and MLP's effect only
    through `receivers` ("logits", the default, or e.g. "L23H4,mlp12"), noising the clean
    run, or with `denoise=True` the corrupt one; returns the path-patching Dataset
    (`results.paths`)."""
    if clean is not None:
        if pairs is not None or None in (corrupt, target, alt):
            raise ConfigError("patch(clean=...) takes corrupt, target and alt, and no pairs")
        pairs = [{"id": "pair", "clean": clean, "corrupt": corrupt, "target": target, "alt": alt}]
    if pairs is None:
        raise ConfigError("patch needs pairs (a JSONL path or dicts) or clean=..., corrupt=..., target=..., alt=...")
    if settings.pop("path", False):
        if resume:
            raise ConfigError("patch(path=True) runs in one go: it takes no resume")
        return _path(model, pairs, out, tokenizer, settings)
    cfg, items = _config("patch", model, pairs, out, resume, settings)
    return _run(cfg, model, items, progress, tokenizer)


def _path(model, pairs, out, tokenizer, settings: dict):
    """`patch(path=True)`: path patching (`methods.path`) of `pairs`, its Dataset."""
    from .path import PathConfig, run

    for alias, name in (("batch_size", "batch_rows"), ("readout", "readouts")):
        if alias in settings:
            settings[name] = settings.pop(alias)
    name, adapter = _adapter(model, tokenizer)
    path = str(pairs) if isinstance(pairs, (str, Path)) else None
    items = None if path else (list(pairs) if not isinstance(pairs, dict) else [pairs])
    cfg = PathConfig(pairs=path, out=str(out) if out else None, model=name,
                     **_settings_of(PathConfig, settings, {"pairs", "out", "model"}))
    found = run(cfg, adapter, items)
    for problem in found.skipped:
        warnings.warn(f"skipped {problem}", stacklevel=_outside())
    return found.dataset


def attribute(model="smollm2-135m", data=None, *, pairs=None, graddrop=False, **kwargs):
    """Attribution patching (AtP): every cell's indirect effect estimated from one forward and
    one backward pass, of records (`data` or `prompt=`, as `trace` takes them) or of prompt
    pairs (`pairs` or `clean=`, as `patch`); the cube holds `ie_atp` (docs/method.md).
    `graddrop`: AtP* (one backward pass per layer, each with that layer's gradient dropped)."""
    kwargs["estimate"] = "atp*" if graddrop else "atp"
    if pairs is not None or "clean" in kwargs:
        if data is not None:
            raise ConfigError("attribute takes records (data) or prompt pairs (pairs), not both")
        return patch(model, pairs, **kwargs)
    return trace(model, data, **kwargs)


def ablate(model="smollm2-135m", data=None, *, pairs=None, op: str = "zero", reference=None, **kwargs):
    """Ablation: every cell of the clean prompt of records (`data` or `prompt=`, as `trace`
    takes them) or of prompt pairs (`pairs` or `clean=`, as `patch`) set to zero, or with
    `op="mean"` to its mean over the `reference` prompts (a JSONL path with `prompt`); the
    cube holds `p_ablated` beside `p_clean` (docs/method.md)."""
    kwargs.update(operation=op, reference=str(reference) if reference is not None else None)
    if pairs is not None or "clean" in kwargs:
        if data is not None:
            raise ConfigError("ablate takes records (data) or prompt pairs (pairs), not both")
        return patch(model, pairs, **kwargs)
    return trace(model, data, **kwargs)


def _settings_of(config, settings: dict, given: set[str]) -> dict:
    """`settings` checked against a method's config fields (less those the function takes
    itself), so that a typo is an error naming the known ones."""
    from dataclasses import fields

    known = {f.name for f in fields(config)} - given
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return settings


def _adapter(model, tokenizer):
    """(the model's name, an Adapter for a model a notebook holds or None for a name)."""
    from ..model.loading import wrap

    if isinstance(model, (str, Path)):
        return str(model), None
    adapter = wrap(model, tokenizer)
    return adapter.name, adapter


def edit(model="smollm2-135m", data=None, *, out=None, tokenizer=None, **settings):
    """ROME edits of the records of `data` (a JSONL path), evaluated (`methods.edit`);
    settings are `EditConfig`'s field names (`layer`, `new_object`, `from_cube`, `covariance`,
    `method` ("rome", "memit", "alphaedit"), `layers` ("A-B" or (A, B)), `batch_size`,
    `sequential`, `device`, `dtype`, ...). Returns the `EditRun` (edits, attrs, skipped records); `out=`
    also writes the edits file."""
    from .edit import EditConfig, run

    if not isinstance(data, (str, Path)):
        raise ConfigError("edit takes its records as a JSONL path")
    name, adapter = _adapter(model, tokenizer)
    cfg = EditConfig(data=str(data), out=str(out) if out else None, model=name,
                     **_settings_of(EditConfig, settings, {"data", "out", "model", "batch_rows"}))
    return run(cfg, adapter)


def memorization_scores(model="smollm2-135m", texts=None, *, out=None, tokenizer=None, **settings):
    """Memorisation scores of every window of `texts` (a .txt file, a directory, or JSONL;
    `methods.memorization`), written to `out` (JSONL, resumed when it exists); settings are
    `ScoreConfig`'s (`prefix`, `continuation`, `stride`, `remote`, ...). Returns the
    `ScoreRun` (scores, problems)."""
    from .memorization import ScoreConfig, score

    if texts is None or out is None:
        raise ConfigError("memorization_scores takes texts= and out= (the scores file)")
    name, adapter = _adapter(model, tokenizer)
    cfg = ScoreConfig(texts=str(texts), out=str(out), model=name,
                      **_settings_of(ScoreConfig, settings, {"texts", "out", "model"}))
    return score(cfg, adapter)


def circuit(model="smollm2-135m", pairs=None, *, out=None, tokenizer=None, **settings):
    """EAP/EAP-IG scores of every edge over prompt `pairs` (a JSONL path) and the minimal
    faithful circuit (`methods.circuit.find`), as the circuit file's Dataset; settings are
    `FindConfig`'s (`ig_steps`, `target`, `max_pairs`, `remote`, ...); `out=` also writes it."""
    from .circuit import FindConfig, find

    if pairs is None:
        raise ConfigError("circuit takes pairs= (a JSONL path of prompt pairs)")
    name, adapter = _adapter(model, tokenizer)
    cfg = FindConfig(pairs=str(pairs), out=str(out) if out else None, model=name,
                     **_settings_of(FindConfig, settings, {"pairs", "out", "model", "batch_rows"}))
    found = find(cfg, adapter)
    for problem in found.skipped:
        warnings.warn(f"skipped {problem}", stacklevel=2)
    return found.dataset


def steer(model="smollm2-135m", contrast=None, prompts=None, *, layers=None, alphas=None, readout=None, vectors=None,
          out=None, tokenizer=None, **settings):
    """Steering (CAA, `methods.steer`): vectors from `contrast` pairs (a JSONL path or dicts
    with positive and negative) or reused `vectors` (a vectors file, or an array [layer,
    d_model]), swept over `layers` (a list or "0-29:3"; None: all) x `alphas` on `prompts`
    (a JSONL path or dicts with prompt, target, alt). Returns the sweep's Dataset (without
    prompts: the vectors' Dataset); settings are `SteerConfig`'s (`from_last`, `new_tokens`,
    `save_vectors`, `batch_size`, `remote`, ...); `out=` also writes the sweep."""
    from .steer import SteerConfig, parse_alphas, parse_layers
    from .steer import steer as run_steer

    if "batch_size" in settings:
        settings["batch_rows"] = settings.pop("batch_size")
    name, adapter = _adapter(model, tokenizer)
    path = isinstance(vectors, (str, Path))
    files = {"contrast": str(contrast) if isinstance(contrast, (str, Path)) else None,
             "prompts": str(prompts) if isinstance(prompts, (str, Path)) else None,
             "vectors": str(vectors) if path else None}
    if alphas is not None:
        settings["alphas"] = parse_alphas(alphas)
    cfg = SteerConfig(model=name, layers=parse_layers(layers), readout=readout, out=str(out) if out else None, **files,
                      **_settings_of(SteerConfig, settings, {"model", "layers", "readout", "out", *files}))
    made = run_steer(cfg, adapter, contrast_items=None if contrast is None or files["contrast"] else list(contrast),
                     prompt_items=None if prompts is None or files["prompts"] else list(prompts),
                     vectors=None if vectors is None or path else vectors)
    for problem in made.problems:
        warnings.warn(f"skipped {problem}", stacklevel=_outside())
    return made.dataset if made.dataset is not None else made.vectors
