"""Memorisation (`nnct memorization score|pairs`): which windows of a text the model
reproduces verbatim, and prompt pairs at the point where it stops.

**Score.** Every window of P + N tokens of each text (starting at 0, stride, 2 stride...)
gets the share of its last N tokens that greedy decoding reproduces, position by position,
after its first P (memorization_circuits' score; docs/method.md defaults P = N = 50).
- A text is tokenised without special tokens, and each window is fed behind whatever the
  tokenizer puts in front of a text (its BOS, if any), as any prompt of nnct is.
- A text shorter than one window is reported, not dropped silently.
- The scores file is JSONL, one window per line. Lines are appended batch by batch, so a
  stopped run resumes where it stopped; a rerun skips the windows already there, after
  checking that they were scored with the same model, P and N.

**Pairs** (the prompt-pair schema of `nnct patch`, with the answers' exact token ids).
- **divergence** (memorization_circuits' branch decision), for each window scoring at least
  the threshold:
  - The context is shortened from P tokens, one token at a time. At each length L the model
    greedily continues it to the window's end, and the continuation is scored against the
    true one by smoothed BLEU-4 (`bleu4`).
  - The first L where BLEU-4 drops by more than 30% relative to length L + 1, and where the
    model's next token differs from the text's, is the divergence point.
  - clean = the first L tokens + the text's next token; corrupt = the first L tokens + the
    model's token. target = the text's token after that; alt = the model's own next token
    after the corrupt prompt.
- **dataset** (the memorisation decision): each window scoring at least the threshold is
  paired, greedily and one-to-one, with the most similar window that scores at most `low`.
  Similarity is the cosine of the model's last hidden state, mean-pooled over the P-token
  prefix. All prefixes have P tokens, so the two prompts are of equal length.
  clean = the memorised prefix, corrupt = the other one. target and alt = the model's
  first greedy token after each.

A pair whose prompts do not survive decoding and re-encoding (the same token ids), or whose
target and alt are the same token, is reported and skipped.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, DataError, RecordError, ResumeMismatch
from ..exec.decode import greedy
from ..inputs import spans
from ..inputs.records import read_jsonl
from ..inputs.texts import Window, load_texts, windows
from ..model.weights import same_weights
from ..results.files import atomic
from . import pipeline
from .pipeline import Execution

DIVERGENCE_DROP = 0.3  # memorization_circuits: a relative BLEU-4 drop above this marks the divergence


def special_prefix(tokenizer) -> list[int]:
    """The ids a tokenizer puts in front of a text (its BOS, or nothing)."""
    with_, without = tokenizer("a", add_special_tokens=True)["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
    return list(with_[:len(with_) - len(without)]) if with_[len(with_) - len(without):] == without else []


# -- scores ------------------------------------------------------------------------------------

@dataclass
class Score:
    id: str
    line: int
    text_id: str
    start: int
    model: str
    model_revision: str  # the weights' digest (`model.weights`); "" in files of nnct 0.5
    prefix_tokens: int
    continuation_tokens: int
    score: float
    ids: list[int]  # the window: prefix + continuation
    greedy: list[int]  # the model's N tokens after the prefix
    decoded: str = ""  # where and in which dtype (`decoded_by`); "" in files of nnct 0.5

    def line_dict(self, tokenizer) -> dict:
        p = self.prefix_tokens
        return {"id": self.id, "text_id": self.text_id, "start": self.start, "model": self.model,
                "model_revision": self.model_revision, "prefix_tokens": p,
                "continuation_tokens": self.continuation_tokens, "score": self.score, "ids": self.ids, "greedy": self.greedy,
                "prefix": tokenizer.decode(self.ids[:p]), "continuation": tokenizer.decode(self.ids[p:]),
                "greedy_text": tokenizer.decode(self.greedy), "decoded": self.decoded}


def score_from(obj: dict, path: str, line: int) -> Score:
    try:
        s = Score(str(obj["id"]), line, str(obj["text_id"]), int(obj["start"]), str(obj["model"]),
                  str(obj.get("model_revision", "")), int(obj["prefix_tokens"]),
                  int(obj["continuation_tokens"]), float(obj["score"]), [int(i) for i in obj["ids"]],
                  [int(i) for i in obj["greedy"]], str(obj.get("decoded", "")))
    except KeyError as exc:
        raise RecordError(path, line, exc.args[0], "missing") from None
    except (TypeError, ValueError) as exc:
        raise RecordError(path, line, "<json>", f"a field has the wrong type ({exc})") from None
    if len(s.ids) != s.prefix_tokens + s.continuation_tokens or len(s.greedy) != s.continuation_tokens:
        raise RecordError(path, line, "ids", "the window's length does not match prefix_tokens + continuation_tokens")
    return s


def read_scores(path) -> tuple[list[Score], list[RecordError]]:
    loaded = read_jsonl(path, score_from)
    return loaded.items, loaded.problems


@dataclass
class ScoreRun:
    scores: list[Score]
    problems: list[RecordError] = field(default_factory=list)
    resumed: int = 0


@dataclass(frozen=True, kw_only=True)
class ScoreConfig(Execution):
    texts: str  # a .txt file, a directory of them, or JSONL with id and text
    out: str  # the scores (JSONL); a rerun resumes it
    prefix: int = 50  # P
    continuation: int = 50  # N
    stride: int | None = None  # tokens between windows' starts; None: P + N


AUTO_ROWS = 16  # windows decoded side by side when --batch-size is auto


def score(cfg: ScoreConfig, adapter=None, say=lambda text: None, on_retry=None) -> ScoreRun:
    """Score every window of every text (see the module's docstring) into `cfg.out` (JSONL),
    resuming what it holds; here or on a server."""
    if cfg.prefix < 1 or cfg.continuation < 1:
        raise ConfigError("--prefix and --continuation take at least one token each")
    if cfg.stride is not None and cfg.stride < 1:
        raise ConfigError("--stride takes at least one token")
    return pipeline.run(cfg, lambda session: _score(cfg, session, say), outputs=(cfg.out,), adapter=adapter,
                        on_retry=on_retry)


def _windows(cfg: ScoreConfig, tokenizer, run: "ScoreRun") -> list[Window]:
    loaded = load_texts(cfg.texts)
    run.problems += loaded.problems
    stride = cfg.prefix + cfg.continuation if cfg.stride is None else cfg.stride
    todo: list[Window] = []
    for text in loaded.items:
        ids = tokenizer(text.text, add_special_tokens=False)["input_ids"]
        try:
            todo += windows(text, ids, cfg.prefix + cfg.continuation, stride, loaded.path)
        except RecordError as exc:
            run.problems.append(exc)
    if not todo and not loaded.items:
        raise DataError(f"{cfg.texts}: no text to score")
    return todo


def _score(cfg: ScoreConfig, session: pipeline.Session, say) -> ScoreRun:
    adapter, prefix, continuation = session.adapter, cfg.prefix, cfg.continuation
    run = ScoreRun([], [])
    todo = _windows(cfg, adapter.tokenizer, run)
    out = Path(cfg.out)
    decoded = decoded_by(session)
    done = _resume(out, adapter.name, adapter.revision, prefix, continuation, adapter.tokenizer, decoded)
    run.resumed, run.scores = len(done), list(done.values())
    todo = [w for w in todo if w.id not in done]
    front, batch = special_prefix(adapter.tokenizer), session.batch_rows(AUTO_ROWS)
    with out.open("a", encoding="utf-8") as f:
        for i in range(0, len(todo), batch):
            part = todo[i:i + batch]
            prompts = [front + list(w.ids[:prefix]) for w in part]
            made = session.execute(functools.partial(greedy, adapter, prompts, continuation))
            for w, gen in zip(part, made):
                true = w.ids[prefix:]
                s = Score(w.id, 0, w.text_id, w.start, adapter.name, adapter.revision, prefix, continuation,
                          sum(a == b for a, b in zip(gen, true)) / continuation, list(w.ids), gen, decoded)
                run.scores.append(s)
                f.write(json.dumps(s.line_dict(adapter.tokenizer)) + "\n")
            f.flush()
            say(f"{min(i + batch, len(todo))}/{len(todo)} windows")
    return run


def decoded_by(session: pipeline.Session) -> str:
    """Where greedy tokens were decoded and in which dtype ("local float32", or the server's
    host: its dtype is its own): tokens decoded otherwise may differ where two logits nearly tie."""
    return session.backend if pipeline.on_server(session.cfg) else f"{session.backend} {session.adapter.dtype}"


def _resume(out: Path, model: str, revision: str, prefix: int, continuation: int, tokenizer, decoded: str) -> dict[str, Score]:
    """The windows `out` holds already. Its last line, if unreadable (a stopped run's), is
    dropped from the file; any other bad line is a DataError, so that nothing is lost
    silently. ResumeMismatch if the windows were scored otherwise, or with other weights."""
    if not out.exists():
        return {}
    kept, problems = read_scores(out)
    last = len(out.read_bytes().splitlines())
    for problem in problems:
        if problem.line != last:
            raise DataError(f"{problem}: the scores file is damaged before its last line; mend or move it")
    for s in kept:
        if (s.model, s.prefix_tokens, s.continuation_tokens) != (model, prefix, continuation):
            raise ResumeMismatch(f"{out}:{s.line}: scored with model {s.model}, P={s.prefix_tokens}, N={s.continuation_tokens};"
                                 f" now {model}, P={prefix}, N={continuation}: give another --out")
        same_weights(s.model_revision, revision, f"{out}:{s.line}")
        if s.decoded and s.decoded != decoded:
            raise ResumeMismatch(f"{out}:{s.line}: decoded by {s.decoded}, now by {decoded}: give another --out")
    if problems:
        with atomic(out) as tmp:
            Path(tmp).write_text("".join(json.dumps(s.line_dict(tokenizer)) + "\n" for s in kept), encoding="utf-8")
    return {s.id: s for s in kept}


def one_shape(scores: list[Score], path) -> tuple[int, int]:
    """The (P, N) every window of a scores file shares; DataError when they differ."""
    shapes = {(s.prefix_tokens, s.continuation_tokens) for s in scores}
    if len(shapes) != 1:
        raise DataError(f"{path}: windows of several shapes (P, N) {sorted(shapes)}: pairs take one")
    return shapes.pop()


# -- pairs -------------------------------------------------------------------------------------

def bleu4(candidate: list[int], reference: list[int]) -> float:
    """Smoothed BLEU-4 of one candidate against one reference (the NMT `compute_bleu` that
    memorization_circuits uses: precisions (matches + 1) / (n-grams + 1), their geometric
    mean, times the brevity penalty)."""
    logs = 0.0
    for n in range(1, 5):
        cand = Counter(tuple(candidate[i:i + n]) for i in range(len(candidate) - n + 1))
        ref = Counter(tuple(reference[i:i + n]) for i in range(len(reference) - n + 1))
        matches = sum(min(c, ref[g]) for g, c in cand.items())
        logs += math.log((matches + 1) / (max(len(candidate) - n + 1, 0) + 1)) / 4
    ratio = len(candidate) / max(len(reference), 1)
    penalty = 1.0 if ratio > 1 else (math.exp(1 - 1 / ratio) if ratio > 0 else 0.0)
    return math.exp(logs) * penalty


@dataclass
class MemPair:
    id: str
    line: int  # its window's line in the scores file
    clean: list[int]  # without the tokenizer's special prefix
    corrupt: list[int]
    target: int
    alt: int
    source: dict

    def line_dict(self, tokenizer) -> dict:
        return {"id": self.id, "clean": tokenizer.decode(self.clean), "corrupt": tokenizer.decode(self.corrupt),
                "target": tokenizer.decode([self.target]), "alt": tokenizer.decode([self.alt]),
                "target_token": self.target, "alt_token": self.alt, **self.source}


def divergence_pairs(adapter, scores: list[Score], threshold: float, batch: int = 16, reuse: bool = True) -> list[MemPair]:
    """Branch-decision pairs of the windows scoring at least `threshold` (module docstring).
    The BLEU-4 of length P is compared with 1.0, as the reference starts, so a window whose
    full prefix already goes astray diverges at P."""
    front = special_prefix(adapter.tokenizer)
    chosen = [s for s in scores if s.score >= threshold]
    if chosen and chosen[0].continuation_tokens < 2:
        raise ConfigError("divergence pairs need windows of N >= 2 tokens: the pair's answer follows its last token")
    pairs = []
    for i in range(0, len(chosen), batch):
        part = chosen[i:i + batch]
        previous, open_ = [1.0] * len(part), list(range(len(part)))
        P = part[0].prefix_tokens
        for L in range(P, 0, -1):
            if not open_:
                break
            if L == P and reuse:  # the full prefix's continuation is the score's own greedy tokens
                made = [part[j].greedy for j in open_]
            else:
                made = greedy(adapter, [front + part[j].ids[:L] for j in open_], len(part[0].ids) - L)
            still = []
            for j, gen in zip(open_, made):
                whole = part[j].ids
                before, b = previous[j], bleu4(gen, whole[L:])
                drop = (before - b) / before if before > 0 else 0.0
                previous[j] = b
                if drop > DIVERGENCE_DROP and gen[0] != whole[L]:
                    # a pair whose two answers coincide is kept here for `checked` to report
                    pairs.append(MemPair(part[j].id, part[j].line, whole[:L] + [whole[L]], whole[:L] + [gen[0]],
                                         whole[L + 1], gen[1],
                                         {"mode": "divergence", "window": part[j].id, "context_tokens": L,
                                          "score": part[j].score, "bleu4_before": round(before, 6), "bleu4": round(b, 6)}))
                else:
                    still.append(j)
            open_ = still
    return pairs


def dataset_pairs(adapter, scores: list[Score], threshold: float, low: float = 0.0, batch: int = 16) -> list[MemPair]:
    """Memorisation-decision pairs: each window scoring >= threshold with its most similar
    unused window scoring <= low (module docstring)."""
    high = [s for s in scores if s.score >= threshold]
    rest = [s for s in scores if s.score <= low]
    if not high or not rest:
        return []
    front = special_prefix(adapter.tokenizer)
    vec_high, vec_rest = _pooled(adapter, front, high, batch), _pooled(adapter, front, rest, batch)
    sim = torch.nn.functional.normalize(vec_high, dim=-1) @ torch.nn.functional.normalize(vec_rest, dim=-1).T
    used, pairs = set(), []
    for i, s in enumerate(high):
        order = sim[i].argsort(descending=True).tolist()
        j = next((j for j in order if j not in used), None)
        if j is None:
            break
        used.add(j)
        o = rest[j]
        p = s.prefix_tokens
        pairs.append(MemPair(f"{s.id}|{o.id}", s.line, s.ids[:p], o.ids[:p], s.greedy[0], o.greedy[0],
                             {"mode": "dataset", "window": s.id, "other": o.id, "score": s.score, "other_score": o.score,
                              "similarity": round(float(sim[i, j]), 6)}))
    return pairs


def _pooled(adapter, front: list[int], scores: list[Score], batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(scores), batch):
        ids = torch.tensor([front + s.ids[:s.prefix_tokens] for s in scores[i:i + batch]], device=adapter.device)
        with torch.no_grad():
            hidden = adapter.hf(ids, output_hidden_states=True).hidden_states[-1]
        out.append(hidden[:, len(front):].float().mean(1).cpu())
    return torch.cat(out)


@dataclass(frozen=True, kw_only=True)
class PairsConfig(Execution):
    scores: str  # a scores file (`score`)
    out: str | None = None  # the pairs (JSONL, the schema of nnct patch)
    model: str | None = None  # None: the model the scores file names
    mode: str = "divergence"  # divergence or dataset
    threshold: float = 0.75  # the score a memorised window has at least
    low: float = 0.0  # dataset: the score an unmemorised window has at most


MODES = ("divergence", "dataset")


@dataclass
class PairsRun:
    pairs: list[MemPair]
    skipped: list[RecordError]  # lines of the scores file, and pairs that cannot be used
    windows: int  # windows scoring at least the threshold


def pairs(cfg: PairsConfig, adapter=None) -> PairsRun:
    """The pairs of a scores file's memorised windows (module docstring), written to `cfg.out`."""
    if cfg.mode not in MODES:
        raise ConfigError(f"--mode {cfg.mode}: use {' or '.join(MODES)}")
    read, problems = read_scores(cfg.scores)
    if not read:
        raise DataError(f"{cfg.scores}: no scored window")
    models = {s.model for s in read}
    if len(models) > 1:
        raise DataError(f"{cfg.scores}: windows of several models ({', '.join(sorted(models))})")
    one_shape(read, cfg.scores)
    batch = cfg.batch_rows or AUTO_ROWS

    def make(session: pipeline.Session) -> PairsRun:
        adapter = session.adapter
        # the pairs continue the scores' own greedy tokens: other weights would not
        same_weights(read[0].model_revision, adapter.revision, cfg.scores)
        # the scores' own tokens stand for the full prefix's continuation when decoded as here
        reuse = all(s.decoded in ("", decoded_by(session)) for s in read)
        made = (divergence_pairs(adapter, read, cfg.threshold, batch, reuse) if cfg.mode == "divergence"
                else dataset_pairs(adapter, read, cfg.threshold, cfg.low, batch))
        good, bad = checked(adapter, made, cfg.scores)
        if cfg.out:
            write_pairs(good, cfg.out, adapter.tokenizer)
        return PairsRun(good, problems + bad, sum(s.score >= cfg.threshold for s in read))

    return pipeline.run(cfg, make, outputs=(cfg.out,), adapter=adapter, stored=(models.pop(), cfg.scores))


def checked(adapter, pairs: list[MemPair], path: str) -> tuple[list[MemPair], list[RecordError]]:
    """The pairs that survive decoding and re-encoding with distinct answers; the others reported."""
    front = special_prefix(adapter.tokenizer)
    good, problems = [], []
    for p in pairs:
        for name, ids in (("clean", p.clean), ("corrupt", p.corrupt)):
            again = list(spans.tokenize(adapter.tokenizer, adapter.tokenizer.decode(ids)).ids)
            if again != front + ids:
                problems.append(RecordError(path, p.line, name, f"pair {p.id}: its text re-encodes to other tokens"))
                break
        else:
            if p.target == p.alt:
                problems.append(RecordError(path, p.line, "alt", f"pair {p.id}: target and alt are the same token"))
            else:
                good.append(p)
    return good, problems


def write_pairs(pairs: list[MemPair], out, tokenizer) -> None:
    with atomic(out) as tmp:
        Path(tmp).write_text("".join(json.dumps(p.line_dict(tokenizer)) + "\n" for p in pairs), encoding="utf-8")
