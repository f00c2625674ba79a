"""nnct's engines on a GPU, float32 and bfloat16, on random-weight models of two shapes: the
embedded model's (SmolLM2-135M) and Llama 3.1 8B's (with SmolLM2's vocabulary and tokenizer).
The weights need not travel to the GPU machine (timing needs none); the differences between
engines are then of tiny probabilities, so exactness is tested elsewhere, not here.

    python analysis/bench_gpu.py --config ~/.cache/nnct/smollm2-135m -o analysis/results/bench_gpu

For each shape and dtype: `nnct bench`'s exact comparisons (noise against ROME's loop, a
prompt pair against one forward per cell) and attribution patching against the exact
engine (AtP; AtP* on the small shape). `--only circuit`: `nnct circuit find` (EAP-IG, 5 steps, binary search to F 0.85) on the
memorisation study's 20 divergence pairs (2 on the 8B shape), timed, with the circuit found.
Writes bench_gpu.json (or bench_gpu_circuit.json) and prints the tables.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import click
import torch

from nnct.methods import bench
from nnct.model import embedded
from nnct.model.loading import wrap

DATA = "experiments/data/known_smollm2.jsonl"
COMPONENTS = ("hidden", "mlp", "attn")
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)


def random_model(config: str, shape: str, dtype: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(config)
    if shape == "llama-3.1-8b-shape":
        cfg.update(LLAMA_8B)
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype)).eval()
    hf.config._name_or_path = f"{shape} (random weights)"
    return wrap(hf, AutoTokenizer.from_pretrained(config))


@click.command()
@click.option("--config", default=lambda: str(embedded.local_dir()), help="A directory with the config and tokenizer.")
@click.option("--only", type=click.Choice(["all", "exact", "atp", "circuit"]), default="all", show_default=True)
@click.option("-o", "out", required=True, type=click.Path(file_okay=False))
def main(config, only, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []

    def one(label, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            r = fn(*args, **kwargs)
        except Exception:  # one failed case must not cost the others' device time
            click.echo(f"== {label} FAILED\n{traceback.format_exc()}")
            return
        r["label"] = label
        results.append(r)
        click.echo(f"== {label} ({time.perf_counter() - t0:.0f} s)\n" + (bench.table(r) if "plain_loop" in r else bench.atp_table(r)))
        (out / "bench_gpu.json").write_text(json.dumps(results, indent=1))

    click.echo(f"torch {torch.__version__} | {torch.cuda.get_device_name()}")
    if only == "circuit":
        circuits(config, out)
        return
    for shape, plain_cells in (("smollm2-135m-shape", 30), ("llama-3.1-8b-shape", 10)):
        for dtype in ("float32", "bfloat16"):
            a = random_model(config, shape, dtype)
            if only in ("all", "exact"):
                one(f"{shape} {dtype} exact noise", bench.run, a, DATA, 25, COMPONENTS, plain_cells=plain_cells)
                one(f"{shape} {dtype} exact pair", bench.run, a, DATA, 25, COMPONENTS, plain_cells=plain_cells,
                    corruption="prompt")
            if only in ("all", "atp"):
                one(f"{shape} {dtype} atp noise", bench.run_atp, a, DATA, 25, COMPONENTS)
                if shape.startswith("smollm2"):  # L backward passes: the small shape shows the ratio
                    one(f"{shape} {dtype} atp* noise", bench.run_atp, a, DATA, 25, COMPONENTS, estimate="atp*")
            del a
            torch.cuda.empty_cache()


def circuits(config: str, out: Path) -> None:
    from nnct.methods import circuit

    pairs_file = "analysis/results/memorization/divergence.find.jsonl"
    results = []
    for shape, dtype, pairs in (("smollm2-135m-shape", "float32", 20), ("smollm2-135m-shape", "bfloat16", 20),
                                ("llama-3.1-8b-shape", "bfloat16", 2)):
        a = random_model(config, shape, dtype)
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            ds = circuit.find(circuit.FindConfig(pairs=pairs_file, ig_steps=5, max_pairs=pairs), a).dataset
        except Exception:  # one failed case must not cost the others' device time
            click.echo(f"== {shape} {dtype} circuit FAILED\n{traceback.format_exc()}")
            continue
        seconds = time.perf_counter() - t0
        r = {"shape": shape, "dtype": dtype, "pairs": pairs, "seconds": seconds, "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
             **{k: ds.attrs[k] for k in ("total_edges", "minimal_edges", "faithfulness", "m_clean", "m_corrupt")},
             "search_steps": int(ds.sizes["step"])}
        results.append(r)
        click.echo(f"== {shape} {dtype}: circuit find on {pairs} pairs in {seconds:.1f} s, peak {r['peak_mib']:.0f} MiB;"
                   f" {r['minimal_edges']} of {r['total_edges']} edges, F {r['faithfulness']:.3f}, {r['search_steps']} search steps")
        (out / "bench_gpu_circuit.json").write_text(json.dumps(results, indent=1, default=float))
        del a
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
