"""Steering (`nnct steer`, `nnct.steer`): contrastive activation addition (CAA, Rimsky et al.
2024; ActAdd, Turner et al. 2023 with one pair), swept over layers and scales.

- **Vectors.** For every contrast pair (`inputs.steering`), the residual stream after every
  layer (site `hidden`) at each text's own last token; v[l] = the mean over pairs of
  h_l(positive) - h_l(negative). All layers come from one forward per text, so the vectors
  file (`results.steering`) holds every layer and a later sweep at any layer reuses it
  (`vectors`); a file of another model or other weights is refused.
- **Sweep.** For each test prompt, one unsteered forward, then one row per (layer, alpha)
  of `layers` x `alphas`, batched `batch_rows` rows to a forward (auto: AUTO_ROWS): row
  (l, alpha) adds alpha * v[l] to the residual stream after layer l at every position of
  the prompt, or from its last token on (`from_last`). It reports the two answers'
  first-token probabilities at the last position and any extra readouts.
- **Continuations.** `new_tokens` greedy tokens after each prompt, unsteered and per row,
  batched the same way; generated tokens are always steered.

Everything runs through `session.execute`, here or as one request per stage on a server
(named readouts only). Contrast texts and prompts are tokenised as the model sees them
(with its special tokens); a prompt whose answers share their first token is reported and
skipped, as a bad line is.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, DataError, RecordError, SpanNotFound
from ..exec import steer as exec_steer
from ..inputs import spans
from ..inputs.steering import load_contrast, load_prompts
from ..interventions import readouts as readouts_lib
from ..results import steering as steering_file
from . import pipeline
from .pipeline import Execution

AUTO_ROWS = 128  # rows per forward when --batch-size is auto: a sweep of 10 layers x 12 alphas per forward
ALPHAS = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True, kw_only=True)
class SteerConfig(Execution):
    contrast: str | None = None  # contrast pairs (JSONL); or `vectors`
    vectors: str | None = None  # a vectors file to reuse
    prompts: str | None = None  # test prompts (JSONL); None: only the vectors are made
    layers: tuple[int, ...] | None = None  # None: every layer
    alphas: tuple[float, ...] = ALPHAS
    readout: str | None = None  # extra readouts, comma-separated (prob is always read)
    from_last: bool = False  # steer from the prompt's last token on, not at every position
    new_tokens: int = 12  # greedy continuation tokens per row (0: none)
    out: str | None = None  # the sweep (NetCDF)
    save_vectors: str | None = None  # the vectors file (NetCDF)


@dataclass
class Steered:
    dataset: object  # the sweep's Dataset (None without prompts)
    vectors: object  # the vectors' Dataset
    problems: list[RecordError] = field(default_factory=list)


def parse_layers(spec) -> tuple[int, ...] | None:
    """Layers as given: "all" (None), "0,3,6", ranges "0-29" or "0-29:3" (inclusive, step), or
    a list of ints."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
        return None
    if not isinstance(spec, str):
        return tuple(int(layer) for layer in spec)
    out: list[int] = []
    for part in spec.split(","):
        text, _, step = part.strip().partition(":")
        try:
            first, dash, last = text.partition("-")
            if dash:
                out += range(int(first), int(last) + 1, int(step or 1))
            elif step:
                raise ValueError
            else:
                out.append(int(first))
        except ValueError:
            raise ConfigError(f"--layers {spec!r}: use numbers and ranges, e.g. 0,3,6 or 0-29:3") from None
    return tuple(dict.fromkeys(out))


def parse_alphas(spec) -> tuple[float, ...]:
    """Scales as given: "-8,-4,0,4,8" or a list of numbers."""
    try:
        alphas = tuple(float(a) for a in (spec.split(",") if isinstance(spec, str) else spec))
    except ValueError:
        raise ConfigError(f"--alphas {spec!r}: use comma-separated numbers, e.g. -8,-4,0,4,8") from None
    if not alphas:
        raise ConfigError("--alphas: give at least one scale")
    return tuple(dict.fromkeys(alphas))


def _check(cfg: SteerConfig, contrast_items, vectors) -> tuple:
    """The readouts asked for, after the checks no model is needed for."""
    has_contrast = cfg.contrast is not None or contrast_items is not None
    has_vectors = cfg.vectors is not None or vectors is not None
    if has_contrast == has_vectors:
        raise ConfigError("steering takes contrast pairs (--contrast) or saved vectors (--vectors), one of the two")
    if cfg.new_tokens < 0:
        raise ConfigError(f"--new-tokens {cfg.new_tokens}: cannot be negative")
    if not cfg.alphas:
        raise ConfigError("--alphas: give at least one scale")
    chosen = readouts_lib.parse(cfg.readout)
    if cfg.remote is not None:
        readouts_lib.check_remote(chosen)
    return (readouts_lib.READOUTS["prob"], *(r for r in chosen if r.name != "prob"))


def steer(cfg: SteerConfig, adapter=None, say=lambda text: None, on_retry=None, contrast_items=None, prompt_items=None,
          vectors=None) -> Steered:
    """Steering vectors from contrast pairs (or reused), and the sweep over layers x alphas on
    the test prompts (see the module's docstring); written to `cfg.out` and `cfg.save_vectors`
    when given. `contrast_items`, `prompt_items` (dicts) and `vectors` ([layer, d_model]) are
    what a notebook holds instead of files."""
    chosen = _check(cfg, contrast_items, vectors)
    return pipeline.run(cfg, functools.partial(_steer, cfg, chosen, say, contrast_items, prompt_items, vectors),
                        outputs=(cfg.out, cfg.save_vectors), adapter=adapter, on_retry=on_retry)


def _steer(cfg, chosen, say, contrast_items, prompt_items, given_vectors, session) -> Steered:
    problems: list[RecordError] = []
    vectors, made = _vectors(cfg, session, contrast_items, given_vectors, problems, say)
    if cfg.save_vectors:
        steering_file.write(made, cfg.save_vectors)
        say(f"wrote {cfg.save_vectors}")
    if cfg.prompts is None and prompt_items is None:
        return Steered(None, made, problems)
    prompts = _prompts(cfg.prompts if prompt_items is None else prompt_items, session.adapter.tokenizer, problems)
    layers = _layers(cfg, session.adapter.n_layers)
    dataset = _sweep(cfg, session, chosen, prompts, layers, vectors, made.attrs, say)
    if cfg.out:
        steering_file.write(dataset, cfg.out)
    return Steered(dataset, made, problems)


def _vectors(cfg, session, contrast_items, given, problems, say):
    """(vectors [layer, d_model] float32 torch, the vectors' Dataset)."""
    adapter = session.adapter
    if given is not None:
        vectors = np.asarray(given.detach().cpu() if isinstance(given, torch.Tensor) else given, dtype=np.float32)
        if vectors.shape != (adapter.n_layers, adapter.d_model):
            raise ConfigError(f"vectors of shape {vectors.shape}: this model needs [{adapter.n_layers}, {adapter.d_model}]")
        attrs = {**session.provenance(), "contrast": "<given>", "n_pairs": 0}
    elif cfg.vectors is not None:
        vectors, attrs = steering_file.read_vectors(cfg.vectors, adapter.d_model, adapter.revision)
        if vectors.shape[0] != adapter.n_layers:
            raise ConfigError(f"{cfg.vectors}: vectors of {vectors.shape[0]} layers, this model has {adapter.n_layers}")
        attrs = {**attrs, "contrast": attrs.get("contrast", ""), "source": cfg.vectors}
    else:
        pairs = _contrast(cfg.contrast if contrast_items is None else contrast_items, adapter.tokenizer, problems)
        say(f"steering vectors from {len(pairs)} contrast pairs")
        vectors = session.execute(functools.partial(exec_steer.vectors, adapter.parts, pairs)).numpy()
        attrs = {**session.provenance(pipeline.settings_of(cfg)), "contrast": str(cfg.contrast or "<given>"),
                 "n_pairs": len(pairs)}
    attrs.setdefault("source", attrs["contrast"])
    return torch.from_numpy(vectors), steering_file.vectors_dataset(vectors, attrs)


def _contrast(source, tokenizer, problems) -> list:
    loaded = load_contrast(source)
    problems += loaded.problems
    if not loaded.items:
        raise DataError(f"{loaded.path}: no usable contrast pair")
    return [(list(spans.tokenize(tokenizer, c.positive).ids), list(spans.tokenize(tokenizer, c.negative).ids))
            for c in loaded.items]


def _prompts(source, tokenizer, problems) -> list:
    """(id, text, (target, alt), (target id, alt id), ids) per usable prompt."""
    loaded = load_prompts(source)
    problems += loaded.problems
    out = []
    for p in loaded.items:
        try:
            answers = (spans.answer_token(tokenizer, p.target), spans.answer_token(tokenizer, p.alt))
        except SpanNotFound as exc:
            problems.append(RecordError(loaded.path, p.line, "target", str(exc)))
            continue
        if answers[0] == answers[1]:
            problems.append(RecordError(loaded.path, p.line, "alt", f"{p.target!r} and {p.alt!r} start with the same token"
                                        f" {tokenizer.decode([answers[0]])!r}: their probabilities are one number"))
            continue
        out.append((p.id, p.prompt, (p.target, p.alt), answers, list(spans.tokenize(tokenizer, p.prompt).ids)))
    if not out:
        raise DataError(f"{loaded.path}: no usable prompt")
    return out


def _layers(cfg, n_layers: int) -> list[int]:
    layers = list(range(n_layers)) if cfg.layers is None else list(cfg.layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise ConfigError(f"--layers: {bad or 'none'} outside this model's 0..{n_layers - 1}")
    return layers


def _sweep(cfg, session, chosen, prompts, layers, vectors, vector_attrs, say):
    adapter = session.adapter
    rows = list(itertools.product(layers, cfg.alphas))
    row_layers, row_alphas = [r[0] for r in rows], [float(r[1]) for r in rows]
    batch = session.batch_rows(AUTO_ROWS)
    say(f"sweep: {len(prompts)} prompts x {len(rows)} rows (layer x alpha), {batch} rows a forward")
    got = session.execute(functools.partial(exec_steer.sweep, adapter.parts, [(p[4], p[3]) for p in prompts], row_layers,
                                            row_alphas, vectors, chosen, batch, cfg.from_last))
    shape = (len(prompts), len(layers), len(cfg.alphas))
    clean = readouts_lib.split(chosen, np.stack([c.numpy() for c, _ in got]))
    steered = readouts_lib.split(chosen, np.stack([s.numpy() for _, s in got]).reshape(*shape, -1))
    texts = None
    if cfg.new_tokens:
        say(f"continuations: {cfg.new_tokens} tokens")
        made = session.execute(functools.partial(exec_steer.continuations, adapter.parts, [p[4] for p in prompts],
                                                 row_layers, row_alphas, vectors, cfg.new_tokens, batch, cfg.from_last))
        texts = _texts(adapter.tokenizer, made, shape)
    attrs = {**session.provenance(pipeline.settings_of(cfg)), "readouts": readouts_lib.names(chosen[1:]),
             "from_last": int(cfg.from_last), "vectors": vector_attrs.get("source", ""),
             "n_pairs": int(vector_attrs.get("n_pairs", 0))}
    norms = np.linalg.norm(vectors.numpy()[layers], axis=1)
    return steering_file.sweep_dataset([p[:4] for p in prompts], layers, list(cfg.alphas), clean, steered, norms, texts, attrs)


def _texts(tokenizer, made, shape) -> tuple:
    """(clean [prompt], steered [prompt, layer, alpha]) texts of greedy tokens, cut at the end of text."""
    eos = tokenizer.eos_token_id

    def text(tokens) -> str:
        tokens = list(tokens)
        return tokenizer.decode(tokens[:tokens.index(eos)] if eos in tokens else tokens)

    clean = [text(m[0].tolist()) for m in made]
    steered = np.array([[text(row.tolist()) for row in m[1:]] for m in made], dtype=object).reshape(shape)
    return clean, steered
