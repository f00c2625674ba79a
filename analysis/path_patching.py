"""Which earlier nodes reach the output through L23H4, and what reaches the logits directly.

    python analysis/path_patching.py runs/paths/direct.nc runs/paths/l23h4.nc runs/paths/q.nc \
        runs/paths/kv.nc runs/paths/l29.nc runs/paths/direct-denoise.nc runs/paths/l23h4-denoise.nc \
        -o analysis/results/paths

Each file is `nnct patch --path` over the same pairs, with other receivers or direction. This
writes `table.txt`: per file, the two runs' p(target) and logit difference, the strongest
senders (mean effect on p(target) over pairs, 95% t interval, mean effect on the logit
difference), and the summed effect on the logit difference of heads and of MLPs per layer
third (how much of what arrives at the receivers comes from each kind of node); and one
figure per file (`nnct.analysis.paths.figure`), named after it.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from nnct.analysis import paths as view
from nnct.analysis.plot import save
from nnct.results import paths as path_file
from nnct.results.files import atomic


def thirds(n_layers: int) -> list[tuple[str, np.ndarray]]:
    parts = np.array_split(np.arange(n_layers), 3)
    return [(f"L{p[0]}-{p[-1]}", p) for p in parts]


def runs_line(ds) -> str:
    p = {k: float(ds[f"p_{k}"].sel(answer="target").mean()) for k in ("clean", "corrupt")}
    m = {k: float((ds[f"logit_{k}"].sel(answer="target") - ds[f"logit_{k}"].sel(answer="alt")).mean())
         for k in ("clean", "corrupt")}
    return (f"p(target) clean {p['clean']:.3f}, corrupt {p['corrupt']:.3f}; logit diff clean {m['clean']:.3f},"
            f" corrupt {m['corrupt']:.3f}")


def by_third(ds) -> list[str]:
    """Summed mean effect on the logit difference of the heads and of the MLPs per layer third."""
    heads, mlps = path_file.effect(ds, "logit")
    diff = lambda x: (x.sel(answer="target") - x.sel(answer="alt")).values  # noqa: E731
    # a sender without a path is NaN in every pair: it adds 0
    h, m = np.nan_to_num(diff(heads)).mean(0).sum(-1), np.nan_to_num(diff(mlps)).mean(0)  # [layer]
    parts = thirds(len(m))
    lines = [f"  summed effect on the logit diff   {''.join(f'{t:>10s}' for t, _ in parts)}{'all':>10s}"]
    for name, values in (("heads", h), ("MLPs", m)):
        lines.append(f"  {name:32s}" + "".join(f"{values[idx].sum():10.3f}" for _, idx in parts) + f"{values.sum():10.3f}")
    return lines


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", "outdir", required=True, type=click.Path(file_okay=False))
@click.option("--top", default=8, show_default=True, help="Senders listed per file.")
def main(files, outdir, top):
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for path in files:
        ds = path_file.read(path)
        lines += [f"== {Path(path).name}", "  " + runs_line(ds)]
        lines += ["  " + line for line in view.table(ds, top).splitlines()]
        lines += by_third(ds) + [""]
        save(view.figure(ds), out / Path(path).stem)
    with atomic(out / "table.txt") as tmp:
        Path(tmp).write_text("\n".join(lines))
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
