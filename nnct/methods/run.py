"""A run over a data set: cases -> engine -> rows -> cube, in memory or resumable on disk.

Every method that fills a cube (`trace`: records, noise or substitution; `patch`: prompt
pairs; either with an ablating `operation`: `nnct ablate`) is a `RunConfig` executed here. `execute` makes the cases of the data set
(`inputs.cases`), measures the noise level when noise corrupts (over the whole data set,
so that every shard of a run uses the same), builds each case's corrupted `RunInput`,
runs the engine here or sends the cases to a server (`exec.remote`), and assembles the
cube. Without `out` the rows stay in memory and the cube is returned (the notebook API);
with `out` they go to disk as they finish.

A run on disk keeps its finished examples in `<out>.partial/` beside the output: `run.json`
(the settings and everything derived from the whole data set, such as the noise level)
and one file per finished example, each written atomically. A run killed at any moment
(kill -9 included) therefore keeps every example it finished; `resume=True` checks that
the settings are the same, skips what is done, and assembles the same cube an
uninterrupted run would have written (same noise, same batches, same `created`). The cube
is written to a temporary file and renamed over `out`, and only then is the partial
directory removed.

A remote run (`remote`: a host, or "local" for nnsight's simulation) sends the examples in
requests of whole examples, up to `request_cells` cells each, each retried with backoff.
Without `wait`, the requests are submitted and their job ids kept in `jobs.json` in the
partial directory; a later call (`collect`) collects what finished, submits again what
failed, and writes the cube once every example is in.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, DataError, RecordError, RemoteFailed, ResumeMismatch
from ..exec import remote
from ..inputs import cases as cases_lib
from ..inputs.pairs import check_substitutable, load_pairs
from ..inputs.prompts import experiment
from ..inputs.records import Loaded, load_objects, load_records
from ..interventions import corruption, readouts
from ..interventions.components import COMPONENTS
from ..interventions.components import components as parse_components
from ..interventions.plan import count
from ..interventions.metrics import ANSWER_PROB
from ..interventions.operations import ABLATIONS
from ..model.loading import REMOTE
from ..results import cube, files
from ..results.partial import Partial, partial_dir
from ..results.provenance import created
from . import pipeline
from .pipeline import Execution

METHODS = ("trace", "patch")
CORRUPTIONS = {"trace": ("noise", "substitute"), "patch": ("prompt",)}
NONE = "none"  # an ablation's corruption: the clean prompt is the only one run
PAIRS = "pairs"  # the `experiment` attr of a cube of prompt pairs


@dataclass(frozen=True)
class RunConfig(Execution):
    data: str | None  # a JSONL file of records (trace) or pairs (patch); None: items given to `execute`
    out: str | None = None  # the cube to write; None: the cube stays in memory
    method: str = "trace"
    experiment: str = "subject"
    corruption: str = "noise"  # trace: noise | substitute; patch: prompt
    answer: str = "first"  # first: an answer's first token; full: all its tokens, teacher-forced
    estimate: str = "exact"  # exact: every cell patched; atp: attribution patching's first-order estimate; atp*: with GradDrop
    verify_top: int = 0  # with an estimate: its top cells per component are also patched exactly
    verify_sample: int | None = None  # ... and this many drawn from the rest (None: as many as verify_top)
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
    resume: bool = False
    definition: str | None = None  # the experiment definition's label, e.g. "subject v1"
    shard: str | None = None  # "i/n": only records i, i+n, i+2n, ... (0-based); see `parse_shard`
    request_cells: int = 10000  # remote: cells per request (whole examples, at least one)
    wait: bool = True  # remote: False submits the requests and returns; collect them later
    readout: object = None  # extra readouts: "kl,rank", or in Python a list of names and callables
    operation: str = "copy"  # copy: patching; zero or mean: ablation of the clean prompt's cells
    reference: str | None = None  # mean ablation: JSONL of reference prompts (field `prompt`)

    @property
    def noised(self) -> bool:
        return self.corruption == "noise"

    @property
    def ablating(self) -> bool:
        return self.operation in ABLATIONS

    @property
    def readouts(self) -> tuple:
        """The extra readouts (`interventions.readouts`) the cube stores."""
        return readouts.extra(readouts.parse(self.readout))


@dataclass
class Summary:
    out: str | None
    records: int  # records traced
    examples: int
    skipped: list[RecordError] = field(default_factory=list)
    resumed: int = 0
    noise_level: float = 0.0
    pending: int = 0  # remote, not waiting: requests submitted and not collected yet
    requests: int = 0  # remote: requests sent (retries included)
    bytes_sent: int = 0
    bytes_received: int = 0
    cube: object = None  # the cube (an xarray Dataset) once every example is in


class Progress:
    """Callbacks a front end may implement; the default does nothing."""

    def start(self, total_examples: int, total_cells: int, done_examples: int, done_cells: int) -> None: ...

    def example(self, example_id: str) -> None: ...

    def cells(self, n: int) -> None: ...

    def skipped(self, problems: list[RecordError]) -> None:
        """Records that will not be traced, before tracing starts: the lines that are no
        record as soon as the data set is read (before the model loads), then the records
        found wrong once the model's tokenizer reads them."""

    def retry(self, attempt: int, error: Exception, delay: float) -> None:
        """A remote request failed and is tried again after `delay` seconds."""

    def failed_job(self, job_id: str, error: Exception) -> None:
        """A submitted remote job failed; its examples are submitted again."""


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


# The settings only noise reads: a prompt corruption resets them.
NOISE_KEYS = ("samples", "noise_level", "seed", "replace")


def normalised(cfg: RunConfig) -> RunConfig:
    """The settings a run actually uses: a prompt corruption has one corrupted row and no
    noise settings (NOISE_KEYS are reset, so that they neither label the cube nor block a
    resume)."""
    if cfg.method == "patch" and cfg.corruption == "noise":
        cfg = replace(cfg, corruption="prompt")
    if cfg.ablating:
        cfg = replace(cfg, corruption=NONE, reverse=False)
    if cfg.noised:
        return cfg
    default = RunConfig(data=None)
    return replace(cfg, samples=1, noise_level="none", seed=default.seed, replace=False,
                   experiment=PAIRS if cfg.method == "patch" else cfg.experiment,
                   prompt_format="" if cfg.method == "patch" else cfg.prompt_format)


def _validate(cfg: RunConfig, in_memory: bool = False) -> None:
    """ConfigError (DataError for a missing file) for settings no run could use, before the
    model loads, so that a typo fails at once."""
    pipeline.check(cfg)
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; known: {', '.join(METHODS)}")
    _validate_operation(cfg)
    if cfg.corruption not in CORRUPTIONS[cfg.method] and not cfg.ablating:
        raise ConfigError(f"--corruption {cfg.corruption}: {cfg.method} takes {' or '.join(CORRUPTIONS[cfg.method])}")
    if cfg.answer not in ANSWER_PROB:
        raise ConfigError(f"--answer {cfg.answer}: use {' or '.join(ANSWER_PROB)}")
    _validate_estimate(cfg)
    for name, value, least in (("samples", cfg.samples, 1), ("window", cfg.window, 1), ("max-cf", cfg.max_cf, 0),
                               ("max-examples", cfg.max_examples, 1), ("request-cells", cfg.request_cells, 1)):
        if value is not None and value < least:
            raise ConfigError(f"--{name} {value}: need at least {least}")
    if cfg.out is not None and Path(cfg.out).suffix != ".nc":
        raise ConfigError(f"--out {cfg.out}: the cube is a NetCDF file, name it *.nc")
    if cfg.out is None and (cfg.resume or cfg.shard or not cfg.wait):
        raise ConfigError("--resume, --shard and --no-wait keep a run on disk: give it an output file")
    if not in_memory and (cfg.data is None or not Path(cfg.data).is_file()):
        raise DataError(f"{cfg.data}: no such data file")
    if cfg.method == "trace" and cfg.corruption == "substitute":
        check_substitutable(experiment(cfg.experiment))
    elif cfg.method == "trace":
        experiment(cfg.experiment)
    parse_components(cfg.components)
    if cfg.noised:
        corruption.parse(cfg.noise_level)
    parse_shard(cfg.shard)
    if not cfg.wait and cfg.data is None:
        raise ConfigError("--no-wait needs a data file: `collect` reads the data set again when the results come in")
    if not cfg.wait and cfg.remote in (None, remote.LOCAL):
        raise ConfigError("--no-wait needs a remote server: a run here (or nnsight's local simulation) has nothing to collect later")


def _validate_operation(cfg: RunConfig) -> None:
    """ConfigError for readouts and operations no run could use."""
    extra = readouts.parse(cfg.readout)
    if cfg.remote is not None:  # nnsight's simulation sends the code as a server would get it
        readouts.check_remote(extra)
    if cfg.operation not in ("copy", *ABLATIONS):
        raise ConfigError(f"--op {cfg.operation}: a run's cells copy (trace, patch) or ablate ({', '.join(ABLATIONS)})")
    if cfg.ablating and cfg.estimate != "exact":
        raise ConfigError("ablation is exact: attribution patching estimates restorations, not ablations")
    if cfg.ablating and any(COMPONENTS[c].sever for c in parse_components(cfg.components)):
        raise ConfigError("a severed path freezes sites of a corrupted run: ablation has none (drop hidden-sever-*)")
    if (cfg.operation == "mean") != (cfg.reference is not None):
        raise ConfigError("--op mean takes its means over --reference FILE (and only mean ablation reads one)")
    if cfg.reference is not None and not Path(cfg.reference).is_file():
        raise DataError(f"{cfg.reference}: no such reference file")


def _validate_estimate(cfg: RunConfig) -> None:
    if cfg.estimate not in cube.ESTIMATES:
        raise ConfigError(f"estimate {cfg.estimate!r}: use {' or '.join(cube.ESTIMATES)}")
    if (cfg.verify_top or cfg.verify_sample) and cfg.estimate == "exact":
        raise ConfigError("--verify-top checks an estimate: it belongs to `nnct attribute`")
    if cfg.verify_top < 0 or (cfg.verify_sample or 0) < 0:
        raise ConfigError("--verify-top and --verify-sample count cells: they cannot be negative")
    if cfg.estimate != "exact":
        from ..exec.attribution import check

        check(parse_components(cfg.components), cfg.answer == "full")
        readouts.check_gradient(cfg.readouts)


def _load(cfg: RunConfig, items) -> Loaded:
    if items is not None:
        return items if isinstance(items, Loaded) else (load_pairs(items) if cfg.method == "patch" else load_objects(items))
    return load_pairs(cfg.data) if cfg.method == "patch" else load_records(cfg.data)


def _no_case(cfg: RunConfig, loaded: Loaded, problems: list[RecordError]) -> DataError:
    reasons = "; ".join(str(p) for p in problems[:3]) + ("; ..." if len(problems) > 3 else "")
    hint = ""
    if cfg.method == "trace" and experiment(cfg.experiment).context and problems and all(p.field == "passages" for p in problems):
        hint = (f". Experiment '{cfg.experiment}' corrupts a part of the context passage, and these records have none:"
                f" records without passages fit --experiment subject-noctx")
    label = cfg.data or loaded.path
    return DataError(f"{label}: no record could be traced ({len(problems)} skipped: {reasons}){hint}")


def make_cases(adapter, cfg: RunConfig, loaded: Loaded) -> tuple[list[cases_lib.Case], list[RecordError], list[int]]:
    """The cases of every record (all shards), the records skipped with their reasons (the
    data set's bad lines among them), and the line of each record (by position)."""
    full = cfg.answer == "full"
    if cfg.method == "patch":
        made = cases_lib.from_pairs(loaded, adapter.tokenizer, full, cfg.max_examples)
    else:
        exp = experiment(cfg.experiment)
        made = cases_lib.from_records(loaded, exp, cfg.prompt_format or exp.prompt_format, cfg.max_cf, adapter.tokenizer,
                                      cfg.corruption == "substitute", full, cfg.max_examples)
    return made


def _shard(items: list, problems: list[RecordError], lines: list[int], shard: tuple[int, int] | None):
    """The cases and problems of one shard. A line that is no record (bad JSON) is shard 0's."""
    if shard is None:
        return items, problems
    i, n = shard
    if n > len(lines):
        raise ConfigError(f"--shard {i}/{n}: the data set has only {len(lines)} records, so some shards would be empty")
    index = {line: k for k, line in enumerate(lines)}
    mine = [p for p in problems if (index[p.line] % n == i if p.line in index else i == 0)]
    return [c for c in items if c.index % n == i], mine


def _sha256(path: str | None, loaded: Loaded) -> str:
    h = hashlib.sha256()
    if path is None:  # a notebook's items: their content
        h.update(repr(loaded.items).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# How a remote run makes its requests: free to change on resume, kept for `collect`.
REQUESTING = ("request_cells", "retries", "retry_delay", "request_timeout")


def _settings(cfg: RunConfig, adapter, loaded: Loaded) -> dict:
    """What must match for a resumed run to complete the same cube."""
    s = asdict(replace(cfg, readout=None))
    s["readout"] = readouts.names(cfg.readouts)  # a callable's name: it cannot be stored
    # How requests are sized, retried and waited for changes no number.
    for k in ("out", "resume", "wait", *REQUESTING):
        s.pop(k)
    if adapter.device == REMOTE:
        s.pop("dtype")  # the server's choice, not a setting of the run
    s["nnct_version"] = __version__
    s["verify_sample"] = _verify_sample(cfg)
    s["device"] = adapter.device
    if cfg.method == "trace":
        s["prompt_format"] = cfg.prompt_format or experiment(cfg.experiment).prompt_format
        s["experiment"] = experiment(cfg.experiment).name
    s["components"] = ",".join(parse_components(cfg.components))
    s["data"] = str(Path(cfg.data).resolve()) if cfg.data else loaded.path
    s["data_sha256"] = _sha256(cfg.data, loaded)
    if cfg.reference:
        s["reference"] = str(Path(cfg.reference).resolve())
        s["reference_sha256"] = _sha256(cfg.reference, loaded)
    s["model_revision"] = adapter.revision
    return s


# Settings added since runs began to be stored, as a run that lacks them was made.
ADDED = {"verify_top": 0, "verify_sample": 0, "readout": "", "operation": "copy", "reference": None}


class _Store:
    """Where finished rows go: memory, or one file each in the partial directory."""

    def __init__(self, n: int, partial: Partial | None):
        self.files = [partial.unit(i, ".npz") for i in range(n)] if partial else None
        self.rows: list = [None] * n

    def done(self) -> list[bool]:
        return [f.is_file() for f in self.files] if self.files else [r is not None for r in self.rows]

    def put(self, k: int, row: cube.Row) -> None:
        if self.files:
            row.save(self.files[k])
        else:
            self.rows[k] = row

    def all(self, names: list[str]) -> list:
        return [cube.Row.load(f, i) for f, i in zip(self.files, names)] if self.files else self.rows


def _row(case: cases_lib.Case, measures, tokenizer) -> cube.Row:
    ex = case.example
    return cube.Row(
        example=ex.id, record_id=ex.record_id, variant=ex.variant, prompt=ex.prompt, corrupt_prompt=ex.corrupt_prompt or "",
        target_str=ex.target, alt_str=ex.alt, line=case.line, token_ids=list(case.ids), token_str=list(case.token_str),
        segment=list(case.segments), span=list(case.span), answer_ids=[a[0] for a in case.answers],
        clean_top1=measures.clean_top1, clean_top1_str=tokenizer.decode([measures.clean_top1]),
        values={**{k: getattr(measures, k) for k in cube.MEASURED}, **measures.restored, **measures.runs},
    )


def execute(cfg: RunConfig, adapter=None, progress: Progress | None = None, items=None) -> Summary:
    """Run (or resume, or collect) a run; once every example is in, the cube is written to
    `cfg.out` (when given) and returned in the Summary. `items`: the data set's records or
    pairs as a notebook holds them (dicts), instead of `cfg.data`."""
    cfg = normalised(cfg)
    _validate(cfg, in_memory=items is not None)  # before the model loads, so that a typo fails at once
    progress = progress or Progress()
    with pipeline.writing(cfg.out):
        loaded, early = _read(cfg, items, progress)
        session = pipeline.open_session(cfg, adapter, progress.retry)
        return _Run(cfg, session, loaded, early, progress).go()


def _read(cfg: RunConfig, items, progress: Progress) -> tuple[Loaded, list[RecordError]]:
    """The data set, read before the model loads: a line that is no record is reported at once."""
    loaded = _load(cfg, items)
    lines = [item.line for item in loaded.items[: cfg.max_examples]]
    _, early = _shard([], loaded.problems, lines, parse_shard(cfg.shard))
    progress.skipped(early)
    if not loaded.items:
        raise _no_case(cfg, loaded, early)
    return loaded, early


@dataclass
class _Run:
    """One run's steps on the skeleton: cases -> what the whole data set fixes once (the
    noise level, the batch budget) -> the engine here or over the session's channel -> rows
    -> the cube."""

    cfg: RunConfig
    session: pipeline.Session
    loaded: Loaded
    early: list[RecordError]
    progress: Progress

    def go(self) -> Summary:
        cfg, adapter = self.cfg, self.session.adapter
        every, problems, lines = make_cases(adapter, cfg, self.loaded)
        self.chosen, self.problems = _shard(every, problems, lines, parse_shard(cfg.shard))
        self.progress.skipped([p for p in self.problems if p not in self.early])
        if not self.chosen:
            raise _no_case(cfg, self.loaded, self.problems)
        self.settings = _settings(cfg, adapter, self.loaded)
        self.partial = Partial.open(cfg.out, self.settings, cfg.resume, ADDED) if cfg.out else None
        self.state = self.partial.state if self.partial else {}
        self.ids = [c.example.id for c in self.chosen]
        if self.state.get("examples", self.ids) != self.ids:
            raise ResumeMismatch(f"{self.partial.dir}: the stored run traced other examples than this data set gives now")
        self.requests = (remote.Requests(self.session.channel, self.progress, cfg.request_cells, cfg.wait)
                         if self.session.channel else None)
        self._fix_once(every)
        store = _Store(len(self.chosen), self.partial)
        done = self._trace(store)
        return self._finish(store, done)

    def save(self) -> None:
        if self.partial:
            self.partial.save()

    def _fix_once(self, every: list) -> None:
        """The noise level (over the whole data set, not the shard: every shard of a run uses
        the same), the batch budget and a local model's pass cost (`exec.costs`), fixed when
        the run begins and kept on resume."""
        from ..exec import costs
        from ..exec.engine import embedding_std, memory_budget

        cfg, adapter = self.cfg, self.session.adapter
        if "noise_level" not in self.state:
            level = 0.0
            if cfg.noised:
                spec = corruption.parse(cfg.noise_level)
                span_ids = [[c.ids[i] for i in c.span] for c in every]
                std = None
                if spec.multiplier is not None:
                    std = self.session.execute(functools.partial(embedding_std, adapter.parts, span_ids))
                level = spec.level(std)
            cost = None if self.session.channel else asdict(costs.cost(adapter))  # a server's passes: not measured here
            self.state.update(noise_level=level, examples=self.ids, batch_budget=memory_budget(adapter.device),
                              pass_cost=cost)
            self.save()
        self.level = float(self.state["noise_level"])
        if self.requests:
            self.state["requesting"] = {k: getattr(cfg, k) for k in REQUESTING}  # `collect` asks the same way
            self.save()

    def _job(self, k: int):
        """Example k's (ids, corrupted input, answers, spellings)."""
        c, cfg = self.chosen[k], self.cfg
        if cfg.ablating:
            return c.ids, corruption.clean_input(c.ids), c.answers, c.spellings
        if c.corrupt_ids is not None:
            return c.ids, corruption.prompt_input(c.corrupt_ids), c.answers, c.spellings
        noise = corruption.draw(cfg.seed, cfg.samples, len(c.span), self.session.adapter.d_model, self.level)
        return c.ids, corruption.noise_input(c.ids, c.span, noise, cfg.replace), c.answers, c.spellings

    def _trace(self, store: _Store) -> list[bool]:
        """Every unfinished example, here or on the server; which were done before."""
        from ..exec import costs
        from ..exec.engine import Engine, Settings, passes

        cfg, adapter, comps = self.cfg, self.session.adapter, parse_components(self.cfg.components)
        cost = self.state.get("pass_cost")  # absent from runs begun before nnct 0.9: FLOPs alone, as then
        engine = Engine(adapter, Settings(comps, cfg.window, cfg.reverse, cfg.batch_rows, self.state["batch_budget"],
                                          cfg.estimate, cfg.verify_top, _verify_sample(cfg), cfg.seed, cfg.readouts,
                                          cfg.operation, self._reference(),
                                          costs.pass_positions(adapter, costs.Cost(**cost)) if cost else None))
        self.n_cells = [count(comps, len(c.ids), adapter.n_layers, adapter.n_heads) * passes(c.answers) for c in self.chosen]
        done = store.done()
        self.progress.start(len(self.chosen), sum(self.n_cells), sum(done), sum(n for n, d in zip(self.n_cells, done) if d))
        todo = [k for k, finished in enumerate(done) if not finished]

        def keep(k: int, measures) -> None:
            store.put(k, _row(self.chosen[k], measures, adapter.tokenizer))

        if self.requests is None:
            for group in self._groups(engine):
                self._trace_group(engine, group, [k for k in group if not done[k]], keep)
            self.state["placed"] = {"device": adapter.device, "dtype": adapter.dtype}
        else:
            self._remote(engine, todo, keep)
        return done

    def _groups(self, engine) -> list[list[int]]:
        """The examples each forward runs together: consecutive examples of one `group_key`,
        at most `group_size` of them. Made over every example, done or not, so that a resumed
        run groups them as the first did, and so computes the same bits."""
        groups, last = [], None
        for k in range(len(self.chosen)):
            key = engine.group_key(*self._job(k)[:3])
            if key is not None and key == last and len(groups[-1]) < engine.group_size(key):
                groups[-1].append(k)
            else:
                groups.append([k])
            last = key
        return groups

    def _trace_group(self, engine, group: list[int], fresh: list[int], keep) -> None:
        """The examples of a group that are not done yet (`fresh`): the whole group runs (its
        bits are the group's), only theirs are kept and counted."""
        if not fresh:
            return
        for k in fresh:
            self.progress.example(self.ids[k])

        def cells(n: int) -> None:  # n counts every example of the group alike
            self.progress.cells(n * len(fresh) // len(group))

        measures = engine.trace_group([self._job(k) for k in group], on_batch=cells)
        for k, m in zip(group, measures):
            if k in fresh:
                keep(k, m)
                if self.cfg.estimate != "exact":  # one pass for every cell
                    self.progress.cells(self.n_cells[k])

    def _reference(self) -> tuple:
        """Mean ablation's reference prompts, tokenised as the examples are (a bad line is
        reported and skipped)."""
        from ..inputs.spans import tokenize
        from ..inputs.texts import load_prompts

        if self.cfg.reference is None:
            return ()
        loaded = load_prompts(self.cfg.reference)
        self.progress.skipped(loaded.problems)
        if not loaded.items:
            raise DataError(f"{self.cfg.reference}: no reference prompt could be read")
        return tuple(tokenize(self.session.adapter.tokenizer, t.text).ids for t in loaded.items)

    def _remote(self, engine, todo: list[int], keep) -> None:
        """The examples `todo` through the server's requests, their jobs kept in jobs.json."""
        def placed(device: str, dtype: str) -> None:
            if "placed" not in self.state:
                self.state["placed"] = {"device": device, "dtype": dtype}
                self.save()
            elif self.state["placed"]["dtype"] != dtype:
                raise RemoteFailed(f"the server now runs the model in {dtype}; this run began in {self.state['placed']['dtype']}")

        jobs_file = self.partial.dir / "jobs.json" if self.partial else None

        def save_jobs(jobs: list) -> None:
            if jobs:
                files.write_json(jobs_file, jobs)
            elif jobs_file and jobs_file.is_file():
                jobs_file.unlink()

        jobs = json.loads(jobs_file.read_text()) if jobs_file and jobs_file.is_file() else []
        self.requests.run(engine, self.ids, todo, self.n_cells, self._job, keep, jobs, save_jobs, placed)

    def _finish(self, store: _Store, done: list[bool]) -> Summary:
        cfg, adapter, requests = self.cfg, self.session.adapter, self.requests
        summary = Summary(cfg.out, len({c.example.record_id for c in self.chosen}), len(self.chosen), self.problems, sum(done),
                          self.level)
        if requests:
            summary.pending, summary.requests = requests.pending, requests.sent
            summary.bytes_sent, summary.bytes_received = requests.bytes_sent, requests.bytes_received
        if summary.pending:
            return summary
        comps = parse_components(cfg.components)
        attrs = _attrs(cfg, self.session, self.settings, self.state, self.partial.created if self.partial else created(),
                       self.level)
        summary.cube = cube.assemble(store.all(self.ids), adapter.n_layers, comps, attrs, adapter.n_heads, cfg.estimate,
                                     verified=bool(cfg.verify_top or _verify_sample(cfg)),
                                     readouts=[(r.name, r.per_answer) for r in cfg.readouts])
        if cfg.out:
            cube.write(summary.cube, cfg.out)
            self.partial.remove()
        return summary


def _attrs(cfg: RunConfig, session: pipeline.Session, settings: dict, state: dict, when: str, level: float) -> dict:
    answer = "first token of ' ' + answer" if cfg.answer == "first" else "all tokens of ' ' + answer, teacher-forced"
    placement = state.get("placed", {"device": "", "dtype": ""})  # where the server ran it, on a server
    return {
        **session.provenance(when=when), "model": cfg.model, "device": placement["device"], "dtype": placement["dtype"],
        "experiment": settings["experiment"], "prompt_format": settings["prompt_format"] or "",
        "samples": cfg.samples, "window": cfg.window, "noise_rule": cfg.noise_level, "noise_level": level,
        "seed": cfg.seed, "replace": int(cfg.replace), "reverse_patching": int(cfg.reverse),
        "components": settings["components"], "max_cf": cfg.max_cf, "data": settings["data"],
        "answer_token": answer, "definition": cfg.definition or "",
        "shard": cfg.shard or "", "data_sha256": settings["data_sha256"],
        "max_examples": -1 if cfg.max_examples is None else cfg.max_examples,
        "corruption": "noise" if cfg.noised else NONE if cfg.ablating else "prompt",
        "operation": cfg.operation, "reference": settings.get("reference") or "",
        "method": cfg.estimate, "verify_top": cfg.verify_top, "verify_sample": _verify_sample(cfg),
        "batch_budget": int(state["batch_budget"]),
    }


def _verify_sample(cfg: RunConfig) -> int:
    """Cells per component drawn at random for exact patching beside the screen's top ones."""
    return cfg.verify_top if cfg.verify_sample is None else cfg.verify_sample


def collect(out: str, wait: bool = False, progress: Progress | None = None, **requesting) -> Summary:
    """Collect the requests a remote run submitted without waiting (and submit again what
    failed), asking as the run did unless `requesting` (see REQUESTING) says otherwise; the
    cube is written once every example is in."""
    from dataclasses import fields

    meta_file = partial_dir(out) / "run.json"
    if not meta_file.is_file():
        raise DataError(f"{partial_dir(out)}: no unfinished run to collect for {out}")
    meta = json.loads(meta_file.read_text())
    stored = meta["settings"]
    if stored.get("remote") in (None, remote.LOCAL):
        raise ConfigError(f"{out}: its run has no server to collect from; complete it by running it again with --resume")
    known = {f.name for f in fields(RunConfig)}
    how = {**meta.get("requesting", {}), **{k: v for k, v in requesting.items() if v is not None}}
    # the device a model without weights reports is the server's, not a setting to ask for again
    given = {k: v for k, v in stored.items() if k in known and k != "out" and not (k == "device" and v == REMOTE)}
    cfg = RunConfig(**given, **how, out=out, resume=True, wait=wait)
    return execute(cfg, progress=progress)

