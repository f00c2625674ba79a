"""Shared fixtures: tiny random-weight models of each supported family, built from configs,
and a tiny word-level tokenizer that prepends a BOS token (so span location meets one).

The suite runs torch on one thread, in this process and in every process it starts (the
environment is inherited): the tiny models' forwards are many times faster so on a busy
machine, where two threads contend with other processes and spin (measured: the engine and
plan tests 138 s with torch's default threads, 12 s with one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
torch.set_num_threads(1)

WORDS = (
    "<s> </s> <unk> C : . , ? the of is in a to by and was at on part city capital located "
    "Paris France Eiffel Tower Rome Italy Vinson Massif Antarctica Africa Europe Asia Beats Music "
    "Apple owned property Amazon continent belongs people speak English French language spoken "
    "which where who what big small red blue green one two three four five six seven eight nine"
).split()
VOCAB = 128  # model vocab; the tokenizer uses the first len(WORDS) ids

ROOT = Path(__file__).resolve().parent.parent  # the repository

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3", "gpt2", "gptj", "gpt_neox")


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def make_config(family: str, n_layers: int = 4, d_model: int = 32, **extra):
    import transformers as T

    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    llama_like = dict(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, **common)
    config = {
        "llama": lambda: T.LlamaConfig(**llama_like),
        "mistral": lambda: T.MistralConfig(**llama_like),
        "qwen2": lambda: T.Qwen2Config(**llama_like),
        "gemma": lambda: T.GemmaConfig(head_dim=d_model // 4, **llama_like),
        "gemma2": lambda: T.Gemma2Config(head_dim=d_model // 4, **llama_like),
        "gemma3": lambda: T.Gemma3TextConfig(head_dim=d_model // 4, **llama_like),
        "gpt2": lambda: T.GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, **common),
        "gptj": lambda: T.GPTJConfig(n_embd=d_model, n_layer=n_layers, n_head=4, rotary_dim=4, **common),
        "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                                            num_attention_heads=4, **common),
    }[family]()
    for key, value in extra.items():
        setattr(config, key, value)
    return config


def make_hf_model(family: str, seed: int = 0, **kw):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(family, **kw), attn_implementation="eager")
    # Random init predicts close to uniformly; larger weights make peaked predictions whose
    # probabilities move visibly under noise and restoration.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
        head = model.get_output_embeddings()
        # A tied head scaled up would only echo the input token back; give it its own weights.
        head.weight = torch.nn.Parameter(torch.randn_like(head.weight) * 0.6)
        model.config.tie_word_embeddings = False
    return model.eval()


def make_adapter(family: str = "llama", **kw):
    from nnct.model.parts import Adapter

    return Adapter(make_hf_model(family, **kw), make_tokenizer(), name=f"tiny-{family}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny llama saved as a local model directory (what `--model DIR` loads)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_hf_model("llama").save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


RECORDS = [
    {"id": "r1", "subj": "Eiffel Tower", "obj": "Paris", "prompt_wo_ctx": "the Eiffel Tower is located in the city of",
     "passages": [{"text": "the Eiffel Tower is in Paris .", "title": ""}], "obj_cf": ["Rome", "Asia"],
     "question": "where is the Eiffel Tower ?", "answers": ["Paris"], "prop": "P1"},
    {"id": "r2", "subj": "Vinson Massif", "obj": "Antarctica", "prompt_wo_ctx": "Vinson Massif is located in the continent of",
     "passages": [{"text": "Vinson Massif is part of Antarctica .", "title": ""}], "obj_cf": ["Africa", "Europe"],
     "question": "which continent is Vinson Massif on ?", "answers": ["Antarctica"], "prop": "P30"},
    {"id": "r3", "subj": "Beats Music", "obj": "Apple", "prompt_wo_ctx": "Beats Music is owned by",
     "passages": [{"text": "Beats Music is a property of Apple .", "title": ""}], "obj_cf": ["Amazon"],
     "question": "who owns Beats Music ?", "answers": ["Apple"], "prop": "P127"},
]


def write_jsonl(path: Path, lines) -> Path:
    """Lines as given (str) or as JSON (anything else), one per line."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """Three good records in the docs/method.md schema, in words the tiny tokenizer knows."""
    return write_jsonl(tmp_path / "facts.jsonl", RECORDS)


@pytest.fixture(scope="session")
def data_file(tmp_path_factory) -> Path:
    """The same three records, shared by a session (so one reference run serves many tests)."""
    return write_jsonl(tmp_path_factory.mktemp("data") / "facts.jsonl", RECORDS)


# Small run settings; batch_rows 8 with 2 samples = 4 cells a forward, so each example takes
# many forwards (and a Progress sees many `cells` calls).
SMALL = dict(experiment="subject-noctx", samples=2, window=3, components="hidden,mlp,attn", batch_rows=8)


def config(model_dir, data, out, **kw):
    """A RunConfig of the tiny model over `data` into `out`, SMALL's settings unless `kw` says."""
    from nnct.methods.run import RunConfig

    return RunConfig(data=str(data), out=str(out), model=str(model_dir), **{**SMALL, **kw})


def invoke(*args):
    """The nnct command line on `args` (each made a str), in this process."""
    from click.testing import CliRunner

    from nnct.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """The nnct cache (covariances, targets, costs) of the test's own, not the user's."""
    monkeypatch.setenv("NNCT_CACHE", str(tmp_path / "cache"))
