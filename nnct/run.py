"""A trace over a data set: records -> examples -> engine -> cube, resumable at any point.

A run keeps its finished examples in `<out>.partial/` beside the output: `run.json` (the
settings and everything derived from the whole data set, such as the noise level) and one
file per finished example, each written atomically. A run killed at any moment (kill -9
included) therefore keeps every example it finished; `resume=True` checks that the
settings are the same, skips what is done, and assembles the same cube an uninterrupted
run would have written (same noise, same batches, same `created`). The cube is written
to a temporary file and renamed over `out`, and only then is the partial directory
removed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__, cube, noise, spans
from .data import load_records
from .errors import ConfigError, DataError, RecordError, ResumeMismatch, SpanNotFound
from .plan import components as parse_components
from .prompts import Example, examples_for, experiment


@dataclass(frozen=True)
class RunConfig:
    data: str
    out: str
    model: str = "smollm2-135m"
    experiment: str = "subject"
    prompt_format: str | None = None  # None: the experiment's default
    samples: int = 10
    window: int = 10
    noise_level: str = "s3"
    seed: int = 0
    components: str = "hidden,mlp,attn"
    max_cf: int = 1
    max_examples: int | None = None  # counts records, as the seed's --max_datapoints
    replace: bool = False
    reverse: bool = False
    batch_rows: int | None = None  # None: chosen from the memory available
    device: str = "cpu"
    dtype: str = "float32"
    resume: bool = False
    definition: str | None = None  # the experiment definition's label, e.g. "subject v1"
    shard: str | None = None  # "i/n": only records i, i+n, i+2n, ... (0-based); see `parse_shard`
    remote: str | None = None  # "local": each example as one nnsight session, serialised as for NDIF


@dataclass
class Item:
    """An example ready to trace."""

    example: Example
    tokens: spans.Tokens
    span: list[int]
    answers: tuple[int, int]
    segments: list[str]
    index: int  # the record's position among the data set's records
    line: int  # the record's line in the data file


@dataclass
class Summary:
    out: str
    records: int  # records traced
    examples: int
    skipped: list[RecordError] = field(default_factory=list)
    resumed: int = 0
    noise_level: float = 0.0


class Progress:
    """Callbacks a front end may implement; the default does nothing."""

    def start(self, total_examples: int, total_cells: int, done_examples: int, done_cells: int) -> None: ...

    def example(self, example_id: str) -> None: ...

    def cells(self, n: int) -> None: ...

    def skipped(self, problems: list[RecordError]) -> None:
        """The records that will not be traced, before tracing starts."""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """"i/n" -> (i, n) with 0 <= i < n: shard i of n takes every n-th record from the i-th."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text}: expected i/n, e.g. 0/4 (shards are numbered from 0)") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0)")
    return i, n


def _validate(cfg: RunConfig) -> None:
    if cfg.samples < 1:
        raise ConfigError(f"--samples {cfg.samples}: need at least 1")
    if cfg.window < 1:
        raise ConfigError(f"--window {cfg.window}: need at least 1")
    if cfg.max_cf < 0:
        raise ConfigError(f"--max-cf {cfg.max_cf}: cannot be negative")
    if cfg.max_examples is not None and cfg.max_examples < 1:
        raise ConfigError(f"--max-examples {cfg.max_examples}: need at least 1")
    if cfg.batch_rows is not None and cfg.batch_rows < 1:
        raise ConfigError(f"--batch-size {cfg.batch_rows}: need at least 1 row")
    if Path(cfg.out).suffix != ".nc":
        raise ConfigError(f"--out {cfg.out}: the cube is a NetCDF file, name it *.nc")
    if not Path(cfg.data).is_file():
        raise DataError(f"{cfg.data}: no such data file")
    experiment(cfg.experiment)
    parse_components(cfg.components)
    noise.parse(cfg.noise_level)
    parse_shard(cfg.shard)
    if cfg.remote not in (None, "local"):
        raise ConfigError(f"remote {cfg.remote!r}: only 'local' (nnsight's simulation of a remote request) is built so far")


def prepare(adapter, cfg: RunConfig) -> tuple[list[Item], list[RecordError], list[int]]:
    """The items of every record of the run (all shards), the records skipped with their
    reasons, and the line of each record (by position)."""
    exp = experiment(cfg.experiment)
    fmt = cfg.prompt_format or exp.prompt_format
    loaded = load_records(cfg.data)
    problems = list(loaded.problems)
    records = loaded.records[: cfg.max_examples] if cfg.max_examples is not None else loaded.records
    items: list[Item] = []
    for index, record in enumerate(records):
        try:
            made = []
            for ex in examples_for(record, exp, fmt, cfg.max_cf, loaded.path):
                tokens = spans.tokenize(adapter.tokenizer, ex.prompt)
                try:
                    span = spans.span_positions(tokens, ex)
                except SpanNotFound as exc:
                    raise RecordError(loaded.path, record.line, exp.span, str(exc)) from None
                answers = spans.answer_tokens(adapter.tokenizer, ex, loaded.path, record.line)
                made.append(Item(ex, tokens, span, answers, spans.segments(tokens, ex), index, record.line))
        except RecordError as exc:
            problems.append(exc)
            continue
        items.extend(made)
    problems.sort(key=lambda p: p.line)
    return items, problems, [r.line for r in records]


def _shard(items: list[Item], problems: list[RecordError], lines: list[int], shard: tuple[int, int] | None):
    """The items and problems of one shard. A line that is no record (bad JSON) is shard 0's."""
    if shard is None:
        return items, problems
    i, n = shard
    if n > len(lines):
        raise ConfigError(f"--shard {i}/{n}: the data set has only {len(lines)} records, so some shards would be empty")
    index = {line: k for k, line in enumerate(lines)}
    mine = [p for p in problems if (index[p.line] % n == i if p.line in index else i == 0)]
    return [it for it in items if it.index % n == i], mine


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _settings(cfg: RunConfig, adapter) -> dict:
    """What must match for a resumed run to complete the same cube."""
    s = asdict(cfg)
    for k in ("out", "resume"):
        s.pop(k)
    s["nnct_version"] = __version__
    s["device"] = adapter.device
    s["prompt_format"] = cfg.prompt_format or experiment(cfg.experiment).prompt_format
    s["experiment"] = experiment(cfg.experiment).name
    s["components"] = ",".join(parse_components(cfg.components))
    s["data"] = str(Path(cfg.data).resolve())
    s["data_sha256"] = _sha256(cfg.data)
    s["model_revision"] = adapter.revision
    return s


def _remove(pdir: Path) -> None:
    """Remove a partial directory: renamed first, so that a kill midway never leaves example
    files without their run.json where a later run would take them for its own."""
    trash = pdir.with_name(f".{pdir.name}.removing-{os.getpid()}")
    os.replace(pdir, trash)
    shutil.rmtree(trash)


def _open_partial(cfg: RunConfig, settings: dict) -> tuple[Path, dict]:
    pdir = partial_dir(cfg.out)
    meta = pdir / "run.json"
    if pdir.is_dir() and not meta.is_file():
        _remove(pdir)  # killed before its run.json was written: nothing in it is usable
    if meta.is_file():
        if not cfg.resume:
            raise ResumeMismatch(f"{pdir} holds an unfinished run: add --resume to complete it, or delete it to start over")
        stored = json.loads(meta.read_text())
        diff = {k: (stored["settings"].get(k), v) for k, v in settings.items() if stored["settings"].get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ResumeMismatch(f"{pdir}: cannot resume with other settings ({lines})")
        return pdir, stored
    pdir.mkdir(parents=True, exist_ok=True)
    return pdir, {"settings": settings, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def trace(cfg: RunConfig, adapter=None, progress: Progress | None = None) -> Summary:
    """Run (or resume) a trace and write its cube to `cfg.out`."""
    from . import models
    from .engine import Engine, Prepared, Settings, memory_budget

    _validate(cfg)  # before the model loads, so that a typo fails at once
    comps = parse_components(cfg.components)
    spec = noise.parse(cfg.noise_level)
    adapter = adapter or models.load(cfg.model, device=cfg.device, dtype=cfg.dtype)
    progress = progress or Progress()
    every, problems, lines = prepare(adapter, cfg)
    items, problems = _shard(every, problems, lines, parse_shard(cfg.shard))
    progress.skipped(problems)
    if not items:
        reasons = "; ".join(str(p) for p in problems[:3])
        raise DataError(f"{cfg.data}: no record could be traced ({len(problems)} skipped: {reasons}{'; ...' if len(problems) > 3 else ''})")
    settings = _settings(cfg, adapter)
    pdir, meta = _open_partial(cfg, settings)
    ids = [it.example.id for it in items]
    if meta.get("examples", ids) != ids:
        raise ResumeMismatch(f"{pdir}: the stored run traced other examples than this data set gives now")
    if "noise_level" not in meta:
        # Over the whole data set, not the shard: every shard of a run uses the same level.
        spans_ids = [[it.tokens.ids[i] for i in it.span] for it in every]
        std = noise.embedding_std(adapter, spans_ids) if spec.multiplier is not None else None
        meta["noise_level"] = spec.level(std)
        meta["examples"] = ids
        meta["batch_budget"] = memory_budget(adapter.device)
        tmp = pdir / "run.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(pdir / "run.json")
    level = float(meta["noise_level"])

    engine = Engine(adapter, Settings(comps, cfg.samples, cfg.window, cfg.replace, cfg.reverse, cfg.batch_rows,
                                      meta["batch_budget"], cfg.remote))
    files = [pdir / f"{i:06d}.npz" for i in range(len(items))]
    n_cells = [len(it.tokens) * adapter.n_layers * len(comps) for it in items]
    done = [f.is_file() for f in files]
    progress.start(len(items), sum(n_cells), sum(done), sum(n for n, d in zip(n_cells, done) if d))
    for item, path, finished in zip(items, files, done):
        if finished:
            continue
        progress.example(item.example.id)
        prep = Prepared(
            ids=item.tokens.ids, span=tuple(item.span), answers=item.answers,
            noise=noise.draw(cfg.seed, cfg.samples, len(item.span), adapter.d_model, level),
        )
        result = engine.trace(prep, on_batch=progress.cells)
        ex = item.example
        cube.ExampleRecord(
            example=ex.id, record_id=ex.record_id, variant=ex.variant, prompt=ex.prompt,
            target_str=ex.target, alt_str=ex.alt, line=item.line, token_ids=list(item.tokens.ids),
            token_str=[adapter.tokenizer.decode([t]) for t in item.tokens.ids], segment=item.segments,
            span=item.span, p_clean=result.p_clean, p_corrupt=result.p_corrupt, p_restored=result.p_restored,
            answer_ids=list(item.answers), clean_top1=result.clean_top1,
            clean_top1_str=adapter.tokenizer.decode([result.clean_top1]),
        ).save(path)

    attrs = {
        "model": cfg.model, "model_revision": adapter.revision, "nnct_version": __version__,
        "experiment": settings["experiment"], "prompt_format": settings["prompt_format"],
        "samples": cfg.samples, "window": cfg.window, "noise_rule": spec.rule, "noise_level": level,
        "seed": cfg.seed, "replace": int(cfg.replace), "reverse_patching": int(cfg.reverse),
        "dtype": adapter.dtype, "backend": "local" if cfg.remote is None else f"nnsight remote={cfg.remote}",
        "device": adapter.device, "created": meta["created"],
        "components": settings["components"], "max_cf": cfg.max_cf, "data": settings["data"],
        "answer_token": "first token of ' ' + answer", "definition": cfg.definition or "",
        "shard": cfg.shard or "", "data_sha256": settings["data_sha256"],
        "max_examples": -1 if cfg.max_examples is None else cfg.max_examples,
    }
    ds = cube.assemble([cube.ExampleRecord.load(f, i) for f, i in zip(files, ids)], adapter.n_layers, comps, attrs)
    cube.write(ds, cfg.out)
    _remove(pdir)
    n_records = len({it.example.record_id for it in items})
    return Summary(cfg.out, n_records, len(items), problems, sum(done), level)
