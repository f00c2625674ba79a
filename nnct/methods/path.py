"""Path patching (`nnct patch --path`): what each head and each MLP does to the output only
through a set of receivers, over prompt pairs (Wang et al. 2022's IOI path patching, in the
edge language of `exec.edges`).

**Pairs** are `nnct patch`'s (and `circuit find`'s) prompt pairs: clean and corrupt prompts
of equal token length, a target and an alternative answer (a pair that cannot be used is
reported and skipped, as `circuit.token_pairs` does). **Receivers** are a spec
(`exec.paths.RECEIVERS_HELP`): the logits (the direct effect, the default), heads' q/k/v
inputs, MLP inputs. **Senders** are every head and every MLP.

Per pair: one forward of both prompts, then batches of senders, one row each, each row
writing its sender's a_u(corrupt) - a_u(clean) into the receivers of the clean run (noising;
`denoise`: a_u(clean) - a_u(corrupt) into the corrupt run); `exec.paths` runs them, here or in
one session on a server. The file (`results.paths`) holds every sender's readouts (the
answers' probabilities and logits, and the extra readouts asked for) beside the two runs'.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, RecordError
from ..exec import paths
from ..interventions import readouts as readouts_lib
from ..model.graph import graph_of
from ..results import paths as path_file
from . import pipeline
from .circuit import token_pairs
from .pipeline import Execution


@dataclass(frozen=True, kw_only=True)
class PathConfig(Execution):
    pairs: str | None  # prompt pairs (JSONL); None: items given to `run`
    out: str | None = None  # the file to write (*.nc); None: the Dataset is returned only
    receivers: str = "logits"  # `exec.paths.RECEIVERS_HELP`
    denoise: bool = False  # the corrupt run with the senders' clean contributions
    readouts: object = None  # extra readouts: names (comma-separated) or callables (`interventions.readouts.parse`)
    max_pairs: int | None = None


@dataclass
class Found:
    dataset: object
    skipped: list[RecordError] = field(default_factory=list)


def check(cfg: PathConfig, items=None) -> tuple:
    """(receivers, extra readouts) of `cfg`; ConfigError or DataError for settings no run could
    use, before the model loads."""
    receivers = paths.parse(cfg.receivers)
    readouts = readouts_lib.extra(readouts_lib.parse(cfg.readouts))
    if cfg.remote is not None:
        readouts_lib.check_remote(readouts)
    if cfg.out is not None and Path(cfg.out).suffix != ".nc":
        raise ConfigError(f"--out {cfg.out}: the path-patching file is NetCDF, name it *.nc")
    if cfg.max_pairs is not None and cfg.max_pairs < 1:
        raise ConfigError(f"--max-pairs {cfg.max_pairs}: need at least 1")
    if items is None and (cfg.pairs is None or not Path(cfg.pairs).is_file()):
        raise DataError(f"{cfg.pairs}: no such pairs file")
    return receivers, readouts


def run(cfg: PathConfig, adapter=None, items=None, say=lambda text: None, on_retry=None) -> Found:
    """Path-patch every sender over the pairs of `cfg.pairs` (or `items`, dicts) to the
    receivers (module docstring), here or on a server; written to `cfg.out` when given."""
    receivers, readouts = check(cfg, items)
    return pipeline.run(cfg, lambda session: _run(cfg, receivers, readouts, items, session, say), outputs=(cfg.out,),
                        adapter=adapter, on_retry=on_retry)


def _run(cfg: PathConfig, receivers, readouts, items, session: pipeline.Session, say) -> Found:
    tokenized, skipped = token_pairs(session.adapter, items if items is not None else cfg.pairs, cfg.max_pairs)
    if not tokenized:
        raise DataError(f"{cfg.pairs or 'the pairs given'}: no usable pair")
    g, access = graph_of(session.adapter)
    dests = paths.destinations(g, receivers)
    heads, mlps = paths.senders(g)
    nodes = heads + mlps
    feeds = paths.feeding(g, nodes, dests)
    sent = [u for u, f in zip(nodes, feeds) if f]
    if not sent:
        raise ConfigError(f"receivers {_spec(receivers)}: no head or MLP comes before them (only the embedding feeds them)")
    rows = session.batch_rows(_automatic(session, max(len(p.clean) for p in tokenized), len(sent)))
    reading = paths.reading(readouts)
    say(f"path patching {len(sent)} senders to {_spec(receivers)} over {len(tokenized)} pairs, {rows} rows a forward")
    pairs = [(p.clean, p.corrupt, p.target, p.alt) for p in tokenized]
    results = session.execute(lambda b: paths.patched(access, g, pairs, dests, reading, cfg.denoise, sent, rows, b))
    base = np.stack([np.asarray(r[0]) for r in results])
    path = np.full((len(pairs), len(nodes), base.shape[-1]), np.nan)
    path[:, np.flatnonzero(feeds)] = np.stack([np.asarray(r[1]) for r in results])
    settings = {**pipeline.settings_of(replace(cfg, readouts=readouts_lib.names(readouts)), "out"), "batch_rows": rows}
    attrs = {**session.provenance(settings), "pairs": str(cfg.pairs or "<pairs>"), "n_pairs": len(tokenized),
             "receivers": _spec(receivers), "receiver_destinations": ",".join(g.dests[v][0] for v in dests),
             "direction": "denoising" if cfg.denoise else "noising", "base": "corrupt" if cfg.denoise else "clean",
             "readouts": readouts_lib.names(readouts), "senders_fed": len(sent)}
    tok = session.adapter.tokenizer
    texts = [(tok.decode(p.clean), tok.decode(p.corrupt), tok.decode([p.target]), tok.decode([p.alt])) for p in tokenized]
    ds = path_file.to_dataset(g, [(p.id, p.target, p.alt) for p in tokenized], texts, base, path, reading, attrs)
    if cfg.out:
        path_file.write(ds, cfg.out)
    return Found(ds, skipped)


def _spec(receivers) -> str:
    return ",".join(r.label for r in receivers)


def _automatic(session: pipeline.Session, n_tokens: int, senders: int) -> int:
    """Rows a forward: what the memory budget allows (as the engine counts a row), on a CPU
    at most `engine.CPU_TOKEN_ROWS` row-tokens, never more than the senders."""
    from ..exec.engine import CPU_TOKEN_ROWS, auto_batch_rows, memory_budget

    adapter = session.adapter  # on a server its device is REMOTE, whose budget is a server's
    rows = auto_batch_rows(adapter.parts, n_tokens, 1, memory_budget(adapter.device))
    if adapter.device == "cpu":
        rows = min(rows, max(1, CPU_TOKEN_ROWS // n_tokens))
    return max(1, min(rows, senders))
