"""Build the memorisation corpus from text that packages ship (no download): the licence texts
Debian installs under /usr/share/common-licenses, the MIT and BSD-3-Clause licences as Python
wheels ship them (anyio's and click's), CPython's own licence, and the Zen of Python.

    python experiments/memorization/corpus.py experiments/data/memorization

It also writes `<out>-short.jsonl`: the four short texts the model reproduces best (the MIT and
BSD licences' warranty clauses, the Zen of Python), which the circuit study scores in short,
overlapping windows.

Licences are among the most repeated texts on the web, so a small model is likelier to have
memorised them than other text; the Zen of Python is short and famous. Each file keeps its
text verbatim (licences allow that); a source missing on this machine is reported and left out.
"""

from __future__ import annotations

import codecs
import json
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

DEBIAN = Path("/usr/share/common-licenses")
DEBIAN_NAMES = ("Apache-2.0", "GPL-2", "GPL-3", "LGPL-2.1", "MPL-2.0", "BSD", "Artistic", "CC0-1.0")
WHEELS = {"mit.txt": "anyio", "bsd-3-clause.txt": "click"}
SHORT = ("mit.txt", "BSD.txt", "bsd-3-clause.txt", "zen-of-python.txt")


def wheel_licence(dist: str) -> str | None:
    for f in metadata.distribution(dist).files or []:
        if "LICENSE" in f.name.upper():
            return f.read_text()
    return None


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts: dict[str, str | None] = {f"{n}.txt": (DEBIAN / n).read_text() if (DEBIAN / n).is_file() else None
                                    for n in DEBIAN_NAMES}
    for name, dist in WHEELS.items():
        texts[name] = wheel_licence(dist)
    cpython = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    texts["python-license.txt"] = cpython.read_text() if cpython.is_file() else None
    import this  # noqa: F401  (prints the Zen once)

    texts["zen-of-python.txt"] = codecs.decode(this.s, "rot13") + "\n"
    for name, text in texts.items():
        if text is None:
            print(f"missing here: {name}", file=sys.stderr)
            continue
        (out_dir / name).write_text(text)
    short = out_dir.with_name(out_dir.name + "-short.jsonl")
    short.write_text("".join(json.dumps({"id": n, "text": texts[n]}) + "\n" for n in SHORT if texts.get(n)))
    print(f"wrote {sum(t is not None for t in texts.values())} texts into {out_dir}, and {short}")


if __name__ == "__main__":
    main(sys.argv[1])
