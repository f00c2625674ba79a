"""ROME's averaged causal-trace picture from a cube: mean indirect effect per segment and
layer (the rows of ROME's Figure 1 average), printed as a table over layer bands, with the
peak of each segment and its 95% confidence interval.

    python analysis/rome_average.py runs/rome_noctx_hidden.nc [--component hidden] [--bands 6]
"""

import argparse

from nnct.results.cube import open_cube
from nnct.analysis.summary import summarize, table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cube")
    parser.add_argument("--component", default="hidden")
    parser.add_argument("--bands", type=int, default=6, help="layer bands to average over")
    args = parser.parse_args()
    summary = summarize(open_cube(args.cube)).sel(component=[args.component])
    print(f"{args.cube}: " + table(summary, "prob", args.bands))


if __name__ == "__main__":
    main()
