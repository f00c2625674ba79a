"""ROME's averaged causal-trace picture from a cube: mean indirect effect per segment and
layer (the rows of ROME's Figure 1 average), printed as a table over layer bands. Written
out with numpy, the way one would in a notebook; `nnct summarize` prints the same AIE with
confidence intervals.

    python analysis/rome_average.py runs/rome_noctx_hidden.nc [--component hidden] [--bands 6]
"""

import argparse

import numpy as np

from nnct.cube import effects, open_cube
from nnct.spans import SEGMENT_ORDER


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cube")
    parser.add_argument("--component", default="hidden")
    parser.add_argument("--bands", type=int, default=6, help="layer bands to average over")
    args = parser.parse_args()
    ds = open_cube(args.cube)
    ie, te = effects(ds)
    ie = ie.sel(answer="target", component=args.component).values  # [example, token, layer]
    seg = ds.segment.values
    L = ie.shape[-1]
    bands = np.array_split(np.arange(L), args.bands)
    present = [s for s in SEGMENT_ORDER if (seg == s).any()]
    # mean over the tokens of a segment within each example, then over the examples having it
    table = {}
    for s in present:
        rows = [np.nanmean(ie[e][seg[e] == s], axis=0) for e in range(ie.shape[0]) if (seg[e] == s).any()]
        table[s] = np.nanmean(rows, axis=0)
    print(f"{args.cube}: {ds.sizes['example']} examples, component {args.component}, "
          f"mean TE {float(te.sel(answer='target').mean()):.3f}, "
          f"mean p_clean {float(ds.p_clean.sel(answer='target').mean()):.3f}, "
          f"mean p_corrupt {float(ds.p_corrupt.sel(answer='target').mean()):.3f}")
    print("AIE by segment (rows) and layer band (columns):")
    print(f"{'segment':20s}" + "".join(f"{f'L{b[0]}-{b[-1]}':>9s}" for b in bands) + f"{'peak':>12s}")
    for s, row in table.items():
        peak = int(np.nanargmax(row))
        print(f"{s:20s}" + "".join(f"{np.nanmean(row[b]):9.3f}" for b in bands) + f"{row[peak]:8.3f} L{peak}")


if __name__ == "__main__":
    main()
