"""ROME editing (`nnct edit`): rewrite each record's fact at a layer, and evaluate the edit.

For each record the subject s, its prompt (`prompt_wo_ctx`) and the new object o* (its first
counterfactual, `cf1`, or a field of the record): the key k* is the down projection's input
at the last subject token, averaged over the prompt alone and behind ROME's context prefixes
(20 texts the model writes itself from its BOS token, 10 of 5 tokens and 10 of 10, sampling
from the top 5 with the run's seed; each prefix is followed by ". "); v* is found by
`exec.rome.value` over those prompts followed by o*'s tokens but the last, with the KL
prompt "{s} is a"; C is the keys' second moment over CPython's documentation
(`inputs.corpus`, cached per model, layer and token count under the nnct cache), or the
identity; the update is `interventions.rank_one`'s. The layer is given, or the MLP's peak
average indirect effect at the last subject token (metric prob) of a cube of these facts
(`from_cube`), or of a trace of them made here (subject-noctx, mlp, ROME's noise).

Each edit is evaluated on the local model with its weights edited (docs/method.md):
efficacy (o* beats o on the prompt), its magnitude P(o*) - P(o), paraphrase (the same on the
record's passage up to its object and on its question), specificity (on other records of
the same relation, their own object still beats o*) and fluency (the weighted 2- and 3-gram
entropy of a greedy continuation of the prompt). P of a multi-token object is the geometric
mean of its tokens' teacher-forced probabilities (ROME compares mean token log-probs).

`method` "memit" or "alphaedit" (`exec.memit`; local models only): the same facts and new
objects, behind MEMIT's context prefixes (its code's: one text of 10 tokens in all from each
of "The", "Therefore", "Because", "I", "You"), written in batches of `batch_size` (None: one
batch) over the layers
`layers` (default: the 5 ending at the layer ROME would use, clipped at 0), each batch
computed on the original model, or with `sequential` on the model as the earlier batches
left it (AlphaEdit then keeps their keys). Every fact is evaluated with all batches applied.
ROME with `sequential`: each edit computed on the model as the earlier ones left it, all of
them evaluated together in the same way.

A run with `out` keeps what it finished in `<out>.partial/` (`results.partial`) as it goes:
each ROME edit (evaluated, unless edits are evaluated together) and each batch (its edits
and factors) in a file of its own, written whole, beside the layer, layers and prefixes the
run fixed once. Killed at any moment, it completes with `resume` (the same settings, data
and weights) from the first unit it had not finished; the evaluation of edits together runs
after the last unit, so it runs again in full. `max_examples` may differ, unless the layer
is traced here (over those records): a unit is taken when it holds the same records as this
run's unit of that number (ROME's edits, batches of `batch_size`; not one batch of all
records), so a sequential run of the first 300 records completes from a longer run's
partial directory with nothing to compute but its evaluation, and a longer run from a
shorter one's.

Specificity's neighbours and retention's facts come from the records of `unedited` (a
file of facts the run does not edit), else from the data's. Edits evaluated together are
scored on neighbours that no edit rewrote, and beside them the run reads retention: of up to
RETAINED of those facts that no edit rewrote and whose object's first token the model
predicted before any edit, the share it still predicts with every edit in the weights (attrs
`retention_known`, `retention_kept`; `analysis.editing` pools every metric with its interval).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError, RecordError, ResumeMismatch
from ..exec import decode, memit, rome
from ..inputs import corpus, spans
from ..inputs.records import Record, load_records
from ..interventions.rank_one import rank_one, rank_one_from
from ..results import edits as edits_file
from ..results.partial import Partial
from . import pipeline
from .pipeline import Execution

PREFIXES = ((5, 10), (10, 10))  # ROME's context_template_length_params: (tokens, how many), from the BOS token
# MEMIT's and AlphaEdit's (get_context_templates): one text of this many tokens from each word
BATCH_PREFIX_WORDS, BATCH_PREFIX_TOKENS = ("The", "Therefore", "Because", "I", "You"), 10
NEIGHBOURS = 10  # other facts of the relation a specificity score reads
RETAINED = 200  # at most this many other facts are read for retention
FLUENCY_TOKENS = 40


@dataclass(frozen=True, kw_only=True)
class EditConfig(Execution):
    data: str
    out: str | None = None
    new_object: str = "cf1"  # cf1: the record's first counterfactual object; else one of its fields
    layer: int | None = None  # None: the MLP's peak AIE at the last subject token
    from_cube: str | None = None
    covariance: bool = True  # False: C is the identity (EasyEdit's choice for Llama)
    corpus_tokens: int = 100_000
    seed: int = 0
    max_examples: int | None = None
    save: str | None = None  # a directory: the model with every edit in its weights is saved there too
    hparams: rome.Hparams = field(default_factory=rome.Hparams)
    method: str = "rome"  # rome | memit | alphaedit
    layers: tuple[int, int] | str | None = None  # a batch method's range (first, last) or "A-B"; None: 5 ending at `layer`
    batch_size: int | None = None  # a batch method's facts per batch; None: all in one
    sequential: bool = False  # batches (ROME: edits) computed one after another on the model the earlier ones left
    unedited: str | None = None  # JSONL of facts not edited: specificity's neighbours, retention's facts; None: the data's
    evaluate: int | None = None  # edits evaluated together: only this many, drawn with `seed` (all stay in the weights)
    batch_hparams: memit.Hparams | None = None  # None: `memit.hparams_for` the model's family
    update_weight: float | None = None  # MEMIT's lambda (mom2_update_weight), if not the family's
    null_space_energy: float | None = None  # AlphaEdit: a null space holding this share of C's trace, not the threshold's
    resume: bool = False  # complete the unfinished run of the same settings at `out`


METHODS = ("rome", "memit", "alphaedit")
SPAN = 5  # the default range of a batch method: this many layers ending at ROME's layer


def parse_layers(value) -> tuple[int, int] | None:
    """A layer range: "A-B" (or "A"), a (first, last) pair, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        first, _, last = value.partition("-")
        if not (first.strip().isdigit() and (not last or last.strip().isdigit())):
            raise ConfigError(f"--layers {value}: a range of layers A-B")
        value = (int(first), int(last or first))
    elif isinstance(value, int):
        value = (value, value)
    first, last = (int(v) for v in value)
    if first > last:
        raise ConfigError(f"--layers {first}-{last}: the first layer comes after the last")
    return first, last


def check_method(cfg: EditConfig) -> EditConfig:
    """`cfg` with its layer range parsed; ConfigError for combinations no run could use."""
    if cfg.method not in METHODS:
        raise ConfigError(f"--method {cfg.method}: use {', '.join(METHODS)}")
    cfg = replace(cfg, layers=parse_layers(cfg.layers))
    if cfg.evaluate is not None and cfg.evaluate < 1:
        raise ConfigError(f"--evaluate {cfg.evaluate}: evaluate at least 1 edit")
    if cfg.method == "rome":
        for name, given in (("--layers", cfg.layers is not None), ("--batch-size", cfg.batch_size is not None)):
            if given:
                raise ConfigError(f"{name} is for --method memit or alphaedit; ROME edits at one --layer, fact by fact")
        if cfg.sequential and cfg.remote is not None:
            raise ConfigError("--sequential ROME edits write each edit into the weights: it runs locally for now, drop --remote")
        return cfg
    if cfg.remote is not None:
        raise ConfigError(f"--method {cfg.method} runs locally for now: drop --remote")
    if cfg.layers is not None and cfg.layer is not None:
        raise ConfigError("--layer with --layers: the range's last layer is where the targets are found; give one")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size}: need at least 1 fact per batch")
    if cfg.null_space_energy is not None and (cfg.method != "alphaedit" or not 0 < cfg.null_space_energy < 1):
        raise ConfigError(f"--null-space-energy {cfg.null_space_energy}: a share in (0, 1), for --method alphaedit")
    if cfg.method == "alphaedit" and not cfg.covariance:
        raise ConfigError("--no-covariance with --method alphaedit: C = identity has no null space, nothing would change")
    return cfg


def _subject_last(tokenizer, text: str, subject: str, start: int = 0) -> tuple[list[int], int]:
    """(token ids of `text`, the position of the last token of `subject`'s first mention at
    or after character `start`)."""
    at = text.find(subject, start)
    if at < 0:
        raise ConfigError(f"subject {subject!r} not in {text!r}")
    tokens = spans.tokenize(tokenizer, text)
    return list(tokens.ids), spans.overlapping(tokens, [(at, at + len(subject))])[-1]


@dataclass
class Where:
    """Where an edit is found and evaluated. Here (`execute` None): the local weights, into
    which the caller writes an edit (`rome.edited_weights`). On a server: every computation
    is one request (`execute(fn)` calls fn(backend)), and an edit is applied inside each
    trace as an intervention (`edits`, `rome.apply_in_trace`)."""

    adapter: object
    execute: object = None
    edits: tuple = ()

    @property
    def device(self) -> str:
        return self.adapter.device if self.execute is None else "cpu"

    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """[row, vocab] float32: the logits after each row of `ids`."""
        if self.execute is None:
            with torch.no_grad():
                return self.adapter.hf(ids).logits[:, -1].float()
        return self.execute(functools.partial(decode.next_logits, self.adapter.parts, ids.tolist()))

    def continuation(self, ids: list[int], n: int) -> list[int]:
        """n greedy tokens after `ids` (here: the model's `generate`, as ROME's fluency reads it)."""
        if self.execute is None:
            x = torch.tensor([ids], device=self.adapter.device)
            with torch.no_grad():
                out = self.adapter.hf.generate(x, max_new_tokens=n, do_sample=False,
                                               pad_token_id=self.adapter.tokenizer.eos_token_id)
            return out[0, len(ids):].tolist()
        return self.execute(functools.partial(decode.greedy, self.adapter, [ids], n, edits=self.edits))[0]

    @contextlib.contextmanager
    def edited(self, edits):
        """The model with `edits` ((layer, left, right) each) for the block: written into the
        local weights, or applied by every request."""
        if self.execute is None:
            with rome.edited_weights(self.adapter, edits):
                yield self
        else:
            yield replace(self, edits=tuple(edits))


def _sampled(where: Where, ids: torch.Tensor, n: int, generator) -> list[list[int]]:
    """`ids` [row, token] followed by n tokens each, sampled from the top 5."""
    for _ in range(n):
        top = where.next_logits(ids).topk(5, dim=-1)
        pick = torch.multinomial(top.values.softmax(-1).cpu(), 1, generator=generator).to(ids.device)
        ids = torch.cat([ids, top.indices.gather(1, pick)], dim=1)
    return ids.tolist()


def context_prefixes(where: Where, seed: int, batch: bool = False) -> list[str]:
    """Context prefixes: "" and the model's own short texts, each followed by ". ". ROME's:
    10 of 5 tokens and 10 of 10 from the BOS token; MEMIT's and AlphaEdit's (`batch`): one of
    BATCH_PREFIX_TOKENS tokens in all from each of BATCH_PREFIX_WORDS."""
    tok = where.adapter.tokenizer
    generator = torch.Generator(device="cpu").manual_seed(seed)  # drawn on the CPU: the same texts on any device
    texts = []
    if batch:
        for word in BATCH_PREFIX_WORDS:
            ids = tok(word, add_special_tokens=False)["input_ids"]
            rows = _sampled(where, torch.tensor([ids], device=where.device), BATCH_PREFIX_TOKENS - len(ids), generator)
            texts += [tok.decode(rows[0], skip_special_tokens=True)]
    else:
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        for length, count in PREFIXES:
            rows = _sampled(where, torch.tensor([[start]] * count, device=where.device), length, generator)
            texts += [tok.decode(row[1:], skip_special_tokens=True) for row in rows]
    return [""] + [text.strip() + ". " for text in texts]


def covariances(adapter, layers: list[int], tokens: int, execute=None) -> tuple[dict[int, torch.Tensor], int]:
    """C per layer over `tokens` tokens of the corpus, from the cache when it has them (kept
    under the weights' digest and the dtype the keys were read in); on a server (`execute`),
    in one request, and not cached (the server's dtype is its own)."""
    from ..model.embedded import cache_root

    if execute is not None:
        chunks = corpus.chunks(adapter.tokenizer, tokens)
        return execute(functools.partial(rome.second_moments_on_server, adapter.parts, chunks, layers))
    where = (cache_root() / "covariance" / f"{adapter.name.replace('/', '_')}-{adapter.revision}"
             / f"{corpus.NAME}-{tokens}-{adapter.dtype}")
    found, todo = {}, []
    for layer in layers:
        path = where / f"layer{layer}.pt"
        if path.is_file():
            kept = torch.load(path, map_location="cpu")
            found[layer], n = kept["c"], kept["tokens"]
        else:
            todo.append(layer)
    if todo:
        made, n = rome.second_moments(adapter.parts, corpus.chunks(adapter.tokenizer, tokens), todo)
        where.mkdir(parents=True, exist_ok=True)
        for layer, c in made.items():
            torch.save({"c": c, "tokens": n}, where / f"layer{layer}.pt")
        found.update(made)
    return found, n


def _new_object(record: Record, how: str) -> str:
    if how == "cf1":
        return record.obj_cf[0]
    value = getattr(record, how, None)
    if not isinstance(value, str) or not value:
        raise RecordError("", record.line, how, "no such text field for --new-object")
    return value


def _score(where: Where, prompts: list[str], answers: list[str]) -> np.ndarray:
    """[prompt, answer]: the geometric mean of each answer's teacher-forced token
    probabilities after each prompt (" " + answer, as nnct spells answers)."""
    adapter = where.adapter
    if where.execute is not None:
        rows = [(list(spans.tokenize(adapter.tokenizer, p).ids), list(spans.answer_ids(adapter.tokenizer, a)))
                for p in prompts for a in answers]
        got = where.execute(functools.partial(decode.answer_logprobs, adapter.parts, rows, edits=where.edits))
        return np.exp(np.array(got, dtype=np.float64)).reshape(len(prompts), len(answers))
    out = np.zeros((len(prompts), len(answers)))
    for i, prompt in enumerate(prompts):
        base = list(spans.tokenize(adapter.tokenizer, prompt).ids)
        for j, answer in enumerate(answers):
            ids = list(spans.answer_ids(adapter.tokenizer, answer))
            with torch.no_grad():
                logp = adapter.hf(torch.tensor([base + ids], device=adapter.device)).logits[0].float().log_softmax(-1)
            got = logp[len(base) - 1 + torch.arange(len(ids), device=logp.device), torch.tensor(ids, device=logp.device)]
            out[i, j] = float(got.mean().exp())
    return out


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """ROME's fluency: the weighted mean over n of the entropy (bits) of the text's word n-grams."""
    words = text.split()
    total = 0.0
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        count = sum(grams.values())
        total += w * (-sum(c / count * math.log2(c / count) for c in grams.values()) if count else 0.0)
    return total / sum(weights)


def _continuation(where: Where, prompt: str) -> str:
    tok = where.adapter.tokenizer
    return tok.decode(where.continuation(list(spans.tokenize(tok, prompt).ids), FLUENCY_TOKENS), skip_special_tokens=True)


def paraphrases(record: Record) -> list[str]:
    """The record's other phrasings of its fact: its passage up to the object's first
    mention, and its question."""
    out = []
    context = record.context
    at = context.find(record.obj)
    if at > 0:
        out.append(context[:at].rstrip())
    if record.question:
        out.append(record.question)
    return out


def evaluate(where: Where, record: Record, new: str, neighbours: list[Record]) -> dict:
    """The edit's metrics on the model as `where` has it (`Where.edited`)."""
    p = _score(where, [record.prompt_wo_ctx], [new, record.obj])[0]
    para = paraphrases(record)
    para_scores = _score(where, para, [new, record.obj]) if para else np.zeros((0, 2))
    spec = [(_score(where, [n.prompt_wo_ctx], [n.obj, new])[0]) for n in neighbours]
    return {"efficacy": float(p[0] > p[1]), "efficacy_magnitude": float(p[0] - p[1]), "p_new": float(p[0]),
            "p_true": float(p[1]),
            "paraphrase": float(np.mean(para_scores[:, 0] > para_scores[:, 1])) if para else float("nan"),
            "specificity": float(np.mean([s[0] > s[1] for s in spec])) if spec else float("nan"),
            "fluency": ngram_entropy(_continuation(where, record.prompt_wo_ctx))}


def peak_layer(cube) -> int:
    """The layer of the MLP's peak average indirect effect (prob) at the last subject token."""
    from ..analysis.summary import summarize

    s = summarize(cube, metrics=("prob",))
    if "subject_last" not in s.segment.values or "mlp" not in s.component.values:
        raise ConfigError("the cube has no mlp effects at the last subject token: trace subject-noctx with mlp")
    return int(s.best_layer.sel(metric="prob", segment="subject_last", component="mlp"))


def _fact(tok, record: Record, new: str, prefixes: list[str]) -> memit.Fact:
    """The record's token ids for an edit: its prompt behind each prefix ("" first), the
    last subject token in each, the new object's tokens, the KL prompt "{s} is a"."""
    prompts, lookups = [], []
    for prefix in prefixes:
        ids, at = _subject_last(tok, prefix + record.prompt_wo_ctx, record.subj, len(prefix))
        prompts.append(ids)
        lookups.append(at)
    kl_ids, kl_at = _subject_last(tok, f"{record.subj} is a", record.subj)
    return memit.Fact(prompts, lookups, list(spans.answer_ids(tok, new)), kl_ids, kl_at)


def _pad(tok) -> int:
    """The id rows of unequal length are padded with (the tokenizer's pad, else its end of text)."""
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def edit_record(where: Where, record: Record, new: str, layer: int, prefixes: list[str], cov: torch.Tensor | None,
                hp: rome.Hparams) -> edits_file.Edit:
    """One record's edit at `layer` (its metrics not yet measured)."""
    adapter = where.adapter
    tok = adapter.tokenizer
    fact = _fact(tok, record, new, prefixes)
    target, prompts, lookups, kl_ids, kl_at = fact.target, fact.prompts, fact.lookups, fact.kl, fact.kl_lookup
    pad = _pad(tok)
    rewriting = [p + target[:-1] for p in prompts]
    if where.execute is None:
        v, _, log = rome.value(adapter.parts, rewriting, lookups, target, [kl_ids], [kl_at], layer, hp, pad=pad)
        k = rome.keys(adapter.parts, prompts, lookups, layer).mean(0)
        down = adapter.layer_modules()[layer].get_submodule(adapter.layout.mlp_down)
        weight = down.weight if down.weight.shape[0] == adapter.parts.d_model else down.weight.T  # Conv1D is [in, out]
        left, right = rank_one(weight, k, v, k if cov is None else torch.linalg.solve(cov, k))
    else:  # the weights stay on the server: W k* from the down projection's outputs (linear in k)
        v, _, log = rome.value_by_requests(adapter.parts, rewriting, lookups, target, [kl_ids], [kl_at], layer, where.execute,
                                           hp, pad=pad)
        keys, wk = where.execute(functools.partial(rome.keys_on_server, adapter.parts, prompts, lookups, layer))
        k = keys.mean(0)
        left, right = rank_one_from(wk.mean(0), k, v, k if cov is None else torch.linalg.solve(cov, k))
    return edits_file.Edit(record.id, record.subj, record.prompt_wo_ctx, record.obj, new, layer, left.cpu().numpy(),
                           right.cpu().numpy(),
                           {**asdict(hp), "covariance": cov is not None, "prefixes": len(prefixes)},
                           {"v_steps": len(log["loss"]), "v_p_new": log["p_target"][-1]})


@dataclass
class EditRun:
    edits: list[edits_file.Edit]
    attrs: dict
    skipped: list[RecordError]
    factors: list[edits_file.Factors] = field(default_factory=list)  # a batch method's updates


def _located(cfg: EditConfig, adapter) -> int:
    if cfg.layer is not None:
        if not 0 <= cfg.layer < adapter.parts.n_layers:
            raise ConfigError(f"--layer {cfg.layer}: the model has layers 0..{adapter.parts.n_layers - 1}")
        return cfg.layer
    if cfg.from_cube:
        from ..results.cube import open_cube

        return peak_layer(open_cube(cfg.from_cube))
    from .run import RunConfig, execute

    shared = {k: getattr(cfg, k) for k in ("model", "device", "dtype", "batch_rows", "remote", "retries", "retry_delay",
                                           "request_timeout")}
    traced = execute(RunConfig(data=cfg.data, experiment="subject-noctx", components="mlp", max_examples=cfg.max_examples,
                               **shared), adapter=adapter)
    return peak_layer(traced.cube)


def run(cfg: EditConfig, adapter=None, say=lambda text: None, on_retry=None) -> EditRun:
    """Every record's edit, evaluated (see the module's docstring), on the skeleton
    (`pipeline`); written to `cfg.out` with its provenance."""
    cfg = check_method(cfg)
    if cfg.save and pipeline.on_server(cfg):
        raise ConfigError("--save writes the edited weights: it needs the model here, not on a server")
    return pipeline.run(cfg, lambda session: _edit_all(cfg, session, say), outputs=(cfg.out,), adapter=adapter,
                        on_retry=on_retry)


def _skipped(cfg: EditConfig, record: Record, exc: Exception) -> RecordError:
    """A record that cannot be edited, as the error that reports it (file, line, field)."""
    return exc if isinstance(exc, RecordError) else RecordError(cfg.data, record.line, "subj", str(exc))


def _evaluated(edited: Where, edit: edits_file.Edit, record: Record, others: list[Record], before, say,
               rewritten=frozenset()) -> None:
    """`edit`'s metrics measured on the model as `edited` has it, beside p(new) and p(true)
    before any edit (`before`); specificity reads up to NEIGHBOURS facts of `others` of the
    relation that no edit in the weights rewrote (the record's ids in `rewritten`)."""
    neighbours = [r for r in others if r.prop and r.prop == record.prop and r.id != record.id
                  and r.id not in rewritten][:NEIGHBOURS]
    edit.metrics.update(evaluate(edited, record, edit.target_new, neighbours))
    edit.metrics.update(p_new_before=float(before[0]), p_true_before=float(before[1]))
    say(f"{record.id}: {record.obj} -> {edit.target_new}: p {before[0]:.3f} -> {edit.metrics['p_new']:.3f},"
        f" efficacy {edit.metrics['efficacy']:.0f}")


def _top_is_object(where: Where, records: list[Record]) -> list[bool]:
    """Per record: is the model's top next token after its prompt its object's first token
    (ROME's "known")?"""
    tok = where.adapter.tokenizer
    out = []
    for record in records:
        ids = torch.tensor([list(spans.tokenize(tok, record.prompt_wo_ctx).ids)], device=where.device)
        out.append(int(where.next_logits(ids)[0].argmax()) == spans.answer_ids(tok, record.obj)[0])
    return out


def _evaluate_together(cfg: EditConfig, where: Where, others: list[Record], rows: list[tuple], updates: list[tuple],
                       say) -> dict:
    """Each edit of `rows` ((record, new object, Edit) each) evaluated with every update in the
    weights at once (only `cfg.evaluate` of them, drawn with the run's seed, when it says so:
    the others' metrics stay NaN); then retention: of up to RETAINED facts of `others` no
    edit rewrote that the model knew before, how many it still knows. Returns retention's
    attrs."""
    rewritten = frozenset(record.id for record, _, _ in rows)
    if cfg.evaluate is not None and cfg.evaluate < len(rows):
        rows = [rows[i] for i in sorted(random.Random(cfg.seed).sample(range(len(rows)), cfg.evaluate))]
    befores = [_score(where, [record.prompt_wo_ctx], [new, record.obj])[0] for record, new, _ in rows]
    kept_for = [r for r in others if r.id not in rewritten][:RETAINED]
    known = [r for r, k in zip(kept_for, _top_is_object(where, kept_for)) if k]
    with where.edited(updates) as edited:
        for (record, _, edit), before in zip(rows, befores):
            _evaluated(edited, edit, record, others, before, say, rewritten)
        kept = sum(_top_is_object(edited, known))
    return {"retention_known": len(known), "retention_kept": int(kept), "unedited_from": str(cfg.unedited or cfg.data)}


def _others(cfg: EditConfig, loaded, skipped: list) -> list[Record]:
    """The facts specificity and retention read: `cfg.unedited`'s records (its bad ones join
    `skipped`), else the data's."""
    if not cfg.unedited:
        return loaded.items
    found = load_records(cfg.unedited)
    skipped += found.problems
    return found.items


class _Kept:
    """A run's finished units on disk (see the module's docstring): none without `cfg.out`."""

    def __init__(self, cfg: EditConfig, adapter, records: list[Record]):
        self.partial = None
        if not cfg.out:
            return
        unedited = str(Path(cfg.unedited).resolve()) if cfg.unedited else None
        # units are matched by their records instead (`get`), unless the layer is traced over the first max_examples
        traced = cfg.layer is None and not cfg.from_cube and (cfg.method == "rome" or cfg.layers is None)
        leave = ("out", "resume", "save") + (() if traced else ("max_examples",))
        settings = {**pipeline.settings_of(cfg, *leave),
                    "data": str(Path(cfg.data).resolve()), "unedited": unedited, "model_revision": adapter.revision,
                    "device": adapter.device, "nnct_version": __version__}
        self.partial = Partial.open(cfg.out, json.loads(json.dumps(settings)), cfg.resume)
        ids = [r.id for r in records]
        stored = self.partial.state.get("records", ids)
        if stored[: len(ids)] != ids[: len(stored)]:
            raise ResumeMismatch(f"{self.partial.dir}: the stored run edited other records than this data set gives now")
        self.partial.state["records"] = max(stored, ids, key=len)
        self.partial.save()

    def fixed(self, name: str, make):
        """What the run fixes once (a layer, the prefixes): made now, or as it was made."""
        if self.partial is None:
            return make()
        if name not in self.partial.state:
            self.partial.state[name] = make()
            self.partial.save()
        return self.partial.state[name]

    def get(self, k: int, ids: list[str]) -> tuple[list[edits_file.Edit], list[edits_file.Factors]] | None:
        """Unit k's (edits, factors), if it was finished, over the records `ids`: a run of
        more or fewer of the same records (`--max-examples`) shares the units that hold the
        same records (each sequential one computed on what the units before it left)."""
        path = self.partial.unit(k, ".nc") if self.partial else None
        if not (path and path.is_file()):
            return None
        edits = edits_file.read(path)[0]
        if [e.record_id for e in edits] != ids:
            raise ResumeMismatch(f"{path}: the stored unit {k} edited other records than this run's unit {k} "
                                 "(a batch over all records changes with their number)")
        return edits, edits_file.read_factors(path)

    def keep(self, k: int, edits: list[edits_file.Edit], factors: list[edits_file.Factors] = ()) -> None:
        if self.partial:
            edits_file.write(edits, self.partial.unit(k, ".nc"), {}, factors)

    def finish(self) -> None:
        """The output is written: the partial directory goes."""
        if self.partial:
            self.partial.remove()


def _attrs(cfg: EditConfig, session: pipeline.Session, kept: _Kept, layer: int, tokens: int,
           prefixes: list[str]) -> dict:
    """The edits file's attrs every method writes (provenance, data, C, prefixes)."""
    when = kept.partial.created if kept.partial else None
    return {**session.provenance(pipeline.settings_of(cfg, "out", "resume"), when), "model": cfg.model, "layer": layer,
            "covariance": f"{corpus.NAME}, {tokens} tokens" if cfg.covariance else "identity", "seed": cfg.seed,
            "data": str(cfg.data), "new_object": cfg.new_object, "prefixes": len(prefixes)}


def _edit_all(cfg: EditConfig, session: pipeline.Session, say) -> EditRun:
    adapter = session.adapter
    where = Where(adapter, None if session.channel is None else session.execute)
    loaded = load_records(cfg.data)
    records = loaded.items[: cfg.max_examples] if cfg.max_examples else loaded.items
    skipped = list(loaded.problems)
    others = _others(cfg, loaded, skipped)
    kept = _Kept(cfg, adapter, records)
    run = _edit_rome if cfg.method == "rome" else _edit_batches
    result = run(cfg, session, where, others, records, skipped, kept, say)
    kept.finish()
    return result


def _edit_rome(cfg: EditConfig, session: pipeline.Session, where: Where, others: list[Record], records,
               skipped: list, kept: _Kept, say) -> EditRun:
    """ROME's edit of each record, evaluated alone, or with `sequential` each on the model the
    earlier ones left and all of them evaluated together."""
    adapter = where.adapter
    layer = kept.fixed("layer", lambda: _located(cfg, adapter))
    say(f"editing at layer {layer}")
    prefixes = kept.fixed("prefixes", lambda: context_prefixes(where, cfg.seed))
    cov, tokens = covariances(adapter, [layer], cfg.corpus_tokens, where.execute) if cfg.covariance else ({layer: None}, 0)
    made, rows = [], []
    for k, record in enumerate(records):
        try:
            new = _new_object(record, cfg.new_object)
            done = kept.get(k, [record.id])
            if done is None:
                with rome.edited_weights(adapter, edits_file.updates(made) if cfg.sequential else []):
                    edit = edit_record(where, record, new, layer, prefixes, cov[layer], cfg.hparams)
        except (RecordError, ConfigError) as exc:
            skipped.append(_skipped(cfg, record, exc))
            continue
        if done is None:
            if not cfg.sequential:
                before = _score(where, [record.prompt_wo_ctx], [new, record.obj])[0]
                with where.edited([(edit.layer, edit.left, edit.right)]) as edited:
                    _evaluated(edited, edit, record, others, before, say)
            kept.keep(k, [edit])
        else:
            edit = done[0][0]
        made.append(edit)
        rows.append((record, new, edit))
    attrs = {**_attrs(cfg, session, kept, layer, tokens, prefixes), "method": "rome", "sequential": int(cfg.sequential)}
    if cfg.sequential and made:
        attrs.update(_evaluate_together(cfg, where, others, rows, edits_file.updates(made), say))
    if cfg.out and made:
        edits_file.write(made, cfg.out, attrs)
    if cfg.save and made:
        save_edited(adapter, edits_file.updates(made), cfg.save)
    return EditRun(made, attrs, skipped)


def _edit_batches(cfg: EditConfig, session: pipeline.Session, where: Where, others: list[Record], records,
                  skipped: list, kept: _Kept, say) -> EditRun:
    """MEMIT's or AlphaEdit's edits of `records` (see the module's docstring), evaluated with
    every batch in the weights at once (on `others`' facts for specificity and retention)."""
    adapter = where.adapter
    layers = kept.fixed("layers", lambda: _batch_layers(cfg, adapter))
    hp = cfg.batch_hparams or memit.hparams_for(adapter.model_type, adapter.name)
    if cfg.update_weight is not None:
        hp = replace(hp, mom2_update_weight=cfg.update_weight)
    if cfg.null_space_energy is not None:
        hp = replace(hp, nullspace_energy=cfg.null_space_energy)
    cfg = replace(cfg, batch_hparams=hp)
    top = layers[-1]
    say(f"editing with {cfg.method} at layers {layers[0]}-{top}")
    prefixes = kept.fixed("prefixes", lambda: context_prefixes(where, cfg.seed, batch=True))
    if cfg.covariance:
        cov, tokens = covariances(adapter, layers, cfg.corpus_tokens)
    else:
        d_ff = adapter.layer_modules()[top].get_submodule(adapter.layout.mlp_down).weight.numel() // adapter.parts.d_model
        cov, tokens = {layer: torch.eye(d_ff, dtype=torch.float64) for layer in layers}, 0
    facts = []
    for record in records:
        try:
            new = _new_object(record, cfg.new_object)
            facts.append((record, new, _fact(adapter.tokenizer, record, new, prefixes)))
        except (RecordError, ConfigError) as exc:
            skipped.append(_skipped(cfg, record, exc))
    if not facts:
        return EditRun([], {}, skipped)
    size = cfg.batch_size or len(facts)
    hparams = {**asdict(hp), "covariance": cfg.covariance, "prefixes": len(prefixes)}
    factors, made = _write_batches(cfg, adapter, facts, layers, cov, size, hparams, kept, say)
    written = edits_file.updates(made, factors)
    retention = _evaluate_together(cfg, where, others, [(r, new, e) for (r, new, _), e in zip(facts, made)], written, say)
    attrs = {**_attrs(cfg, session, kept, top, tokens, prefixes), "layers": f"{layers[0]}-{top}", "method": cfg.method,
             "batches": -(-len(facts) // size), "sequential": int(cfg.sequential),
             "batch_hparams": json.dumps(asdict(hp), sort_keys=True), **retention}
    if cfg.out:
        edits_file.write(made, cfg.out, attrs, factors)
    if cfg.save:
        save_edited(adapter, written, cfg.save)
    return EditRun(made, attrs, skipped, factors)


def _batch_layers(cfg: EditConfig, adapter) -> list[int]:
    """The layers a batch method writes: `--layers A-B`, or the SPAN layers ending at the one
    ROME would edit (clipped at 0)."""
    n_layers = adapter.parts.n_layers
    if cfg.layers is None:
        top = _located(cfg, adapter)
        return list(range(max(0, top - SPAN + 1), top + 1))
    if cfg.layers[1] >= n_layers:
        raise ConfigError(f"--layers {cfg.layers[0]}-{cfg.layers[1]}: the model has layers 0..{n_layers - 1}")
    return list(range(cfg.layers[0], cfg.layers[1] + 1))


def _targets(adapter, facts: list[memit.Fact], top: int, hp: rome.Hparams, pad: int, cached: bool) -> list[tuple]:
    """`memit.targets` of `facts` (those to find optimised together, `memit.TARGET_BATCH` at a
    time); one found on the unedited weights (`cached`) is kept in the nnct cache as soon as
    it is found, each fact's under the weights' digest, dtype and everything it was found
    from, and read from there again (a run of the other batch method, or of more facts, or
    one stopped midway and run again, finds it once)."""
    from ..model.embedded import cache_root

    if not cached:
        return memit.targets(adapter.parts, facts, top, hp, pad=pad)
    model = f"{adapter.name.replace('/', '_')}-{adapter.revision}"
    where = cache_root() / "targets" / model / f"{adapter.device}-{adapter.dtype}"
    paths = [where / f"{hashlib.sha256(json.dumps([asdict(f), top, asdict(hp), pad]).encode()).hexdigest()}.pt"
             for f in facts]
    found = [None] * len(facts)
    for i, path in enumerate(paths):
        if path.is_file():
            kept = torch.load(path)
            found[i] = (kept["z"], kept["log"])
    missing = [i for i, got in enumerate(found) if got is None]
    if missing:
        where.mkdir(parents=True, exist_ok=True)
        got = memit.targets(adapter.parts, [facts[i] for i in missing], top, hp, pad=pad,
                            found=lambda j, target: _cache_target(paths[missing[j]], target))
        for i, target in zip(missing, got):
            found[i] = target
    return found


def _cache_target(path, target: tuple) -> None:
    """(z, log) into the cache file `path`, whole or absent: runs side by side may find the
    same target."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"z": target[0], "log": target[1]}, tmp)
    tmp.replace(path)


def _write_batches(cfg: EditConfig, adapter, facts: list[tuple], layers: list[int], cov: dict, size: int,
                   hparams: dict, kept: _Kept, say):
    """(every batch's `Factors` of each layer, in numpy; an `Edit` per fact):
    `facts` ((record, new object, `memit.Fact`) each) in batches of `size`, each computed on
    the original model, or with `--sequential` on the model as the earlier batches left it
    (AlphaEdit then preserving the earlier batches' keys); a batch finished before is read
    from `kept`."""
    hp, top = cfg.batch_hparams, layers[-1]
    pad = _pad(adapter.tokenizer)
    batches = [facts[i:i + size] for i in range(0, len(facts), size)]
    preserved: dict[int, torch.Tensor] = {}
    solve = memit.memit_solver(cov, hp) if cfg.method == "memit" else memit.alphaedit_solver(cov, preserved, hp)
    factors, made = [], []
    for b, batch in enumerate(batches):
        earlier = edits_file.updates(made, factors) if cfg.sequential else []
        done = kept.get(b, [record.id for record, _, _ in batch])
        if done is None:
            with rome.edited_weights(adapter, earlier):
                found = _targets(adapter, [f for _, _, f in batch], top, hp.value, pad, cached=not earlier)
            update = memit.batch_edit(adapter, [f for _, _, f in batch], layers, solve,
                                      torch.stack([z for z, _ in found], 1), earlier=earlier)
            done = ([edits_file.Edit(record.id, record.subj, record.prompt_wo_ctx, record.obj, new, top, None, None,
                                     hparams, {"v_steps": len(log["loss"]), "v_p_new": log["p_target"][-1]}, batch=b)
                     for (record, new, _), (_, log) in zip(batch, found)],
                    [edits_file.Factors(b, layer, left.cpu().numpy(), right.cpu().numpy())
                     for layer, left, right in update])
            kept.keep(b, *done)
        if cfg.sequential and cfg.method == "alphaedit":
            memit.preserve(adapter, [f for _, _, f in batch], layers, [*earlier, *edits_file.updates([], done[1])],
                           preserved)
        made += done[0]
        factors += done[1]
        say(f"batch {b + 1}/{len(batches)}: {len(batch)} facts written")
    return factors, made


def save_edited(adapter, updates: list[tuple], directory) -> None:
    """The model with every update ((layer, left, right) each: `edits_file.updates`) in its
    weights, saved as a transformers directory (with its tokenizer); the model in memory is
    left unedited."""
    with rome.edited_weights(adapter, updates):
        adapter.hf.save_pretrained(directory)
    adapter.tokenizer.save_pretrained(directory)
