"""The steering sweep batched (rows = layer x alpha in one forward per prompt) against one
forward per (layer, alpha, prompt), side by side in one run, on the same prompts and vectors.

Three ways, each timed over the same prompts after one warm-up forward:
- batched: `exec.steer.sweep` with `--batch-size` rows a forward (auto: methods.steer.AUTO_ROWS);
- nnct, one row a forward: the same code with batch 1 (one nnsight trace per row);
- plain PyTorch: one `model(ids)` per row with a forward hook adding alpha * v (no nnsight).
The three must agree (largest difference of p printed). Writes a table (and JSON with --json).

    .venv/bin/python analysis/steering_bench.py --prompts 3 > analysis/results/steering/bench.txt
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time

import torch

from nnct.exec import steer
from nnct.inputs import spans
from nnct.inputs.steering import load_prompts
from nnct.interventions.readouts import READOUTS
from nnct.methods.steer import AUTO_ROWS, parse_alphas, parse_layers
from nnct.model.loading import load
from nnct.results.steering import read_vectors


def plain(adapter, ids, answers, layers, alphas, vectors) -> torch.Tensor:
    """[row, answer]: one forward per row with a plain hook on the layer's torch module."""
    modules, out = adapter.layer_modules(), []
    x = torch.tensor([ids])
    for layer, alpha in zip(layers, alphas):
        add = alpha * vectors[layer]

        def hook(mod, inp, output, add=add):
            (output[0] if isinstance(output, tuple) else output).add_(add)

        handle = modules[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                out.append(adapter.hf(x).logits[0, -1].float().softmax(-1)[list(answers)])
        finally:
            handle.remove()
    return torch.stack(out)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts-file", default="experiments/data/steering_sentiment_prompts.jsonl")
    ap.add_argument("--vectors", default="analysis/results/steering/sentiment.vectors.nc")
    ap.add_argument("--prompts", type=int, default=3, help="How many prompts are timed.")
    ap.add_argument("--layers", default="0-29:3")
    ap.add_argument("--alphas", default="-8,-6,-4,-2,-1,0,1,2,4,6,8")
    ap.add_argument("--batch-size", type=int, default=AUTO_ROWS)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adapter = load(args.model)
    vectors = torch.from_numpy(read_vectors(args.vectors, adapter.d_model, adapter.revision)[0])
    tok = adapter.tokenizer
    prompts = [(list(spans.tokenize(tok, p.prompt).ids), (spans.answer_token(tok, p.target), spans.answer_token(tok, p.alt)))
               for p in load_prompts(args.prompts_file).items][:args.prompts]
    rows = list(itertools.product(parse_layers(args.layers), parse_alphas(args.alphas)))
    layers, alphas = [r[0] for r in rows], [float(r[1]) for r in rows]
    chosen = (READOUTS["prob"],)
    steer.sweep(adapter.parts, prompts[:1], layers[:1], alphas[:1], vectors, chosen, 1)  # warm-up
    batched, t_batched = timed(lambda: steer.sweep(adapter.parts, prompts, layers, alphas, vectors, chosen, args.batch_size))
    single, t_single = timed(lambda: steer.sweep(adapter.parts, prompts, layers, alphas, vectors, chosen, 1))
    loop, t_plain = timed(lambda: [plain(adapter, ids, ans, layers, alphas, vectors) for ids, ans in prompts])
    diff_single = max(float((b[1] - s[1]).abs().max()) for b, s in zip(batched, single))
    diff_plain = max(float((b[1] - p).abs().max()) for b, p in zip(batched, loop))
    n = len(prompts) * len(rows)
    result = {"model": adapter.name, "prompts": len(prompts), "rows_per_prompt": len(rows), "forwards_batched":
              len(prompts) * (1 + -(-len(rows) // args.batch_size)), "batch_rows": args.batch_size,
              "prompt_tokens": [len(p[0]) for p in prompts], "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "seconds": {"batched": t_batched, "nnct_one_row_per_forward": t_single, "plain_one_row_per_forward": t_plain},
              "speedup_vs_nnct_one_row": t_single / t_batched, "speedup_vs_plain_one_row": t_plain / t_batched,
              "max_abs_diff_p": {"nnct_one_row": diff_single, "plain": diff_plain}}
    print(f"steering sweep, {adapter.name}: {len(prompts)} prompts x {len(rows)} rows (layers {args.layers} x alphas"
          f" {args.alphas}) = {n} steered rows; torch threads {args.threads}")
    print(f"{'way':<40}{'forwards':>10}{'seconds':>10}{'ms/row':>10}{'speedup':>10}")
    for name, forwards, t in (("batched (nnct, %d rows a forward)" % args.batch_size, result["forwards_batched"], t_batched),
                              ("nnct, one row a forward", len(prompts) * (1 + len(rows)), t_single),
                              ("plain PyTorch hook, one row a forward", n, t_plain)):
        print(f"{name:<40}{forwards:>10}{t:>10.2f}{1000 * t / n:>10.1f}{t / t_batched:>10.1f}x")
    print(f"largest |p difference|: nnct one row {diff_single:.2e}, plain {diff_plain:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
