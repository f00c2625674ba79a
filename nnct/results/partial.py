"""A resumable run on disk: `<out>.partial/` beside the output, for any method.

It holds `run.json` (the run's settings and its `state`: whatever the method derived once
for the whole run, such as a noise level, and must reuse) and one file per finished unit
(an example, a pair, a record), each written atomically by the method. A run killed at any
moment (kill -9 included) therefore keeps every unit it finished. Opened again with
`resume`, the stored settings must equal the ones given now: other weights are refused
naming both digests (`model.weights.same_weights`), any other difference naming the
settings. Without `resume`, an unfinished run in the way is an error that says to add
--resume or delete it. `remove` deletes the directory once the output is written: renamed
first, so that a kill midway never leaves unit files without their run.json where a later
run would take them for its own.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ResumeMismatch
from ..model.weights import same_weights
from . import files
from .provenance import created


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


@dataclass
class Partial:
    """An open partial directory (see the module's docstring)."""

    dir: Path
    settings: dict
    created: str
    state: dict = field(default_factory=dict)

    @classmethod
    def open(cls, out: str | Path, settings: dict, resume: bool, added: dict | None = None) -> "Partial":
        """The partial directory of `out`, new or resumed. `added`: settings introduced since
        runs began to be stored, as a run that lacks them was made."""
        pdir = partial_dir(out)
        meta = pdir / "run.json"
        if pdir.is_dir() and not meta.is_file():
            remove(pdir)  # killed before its run.json was written: nothing in it is usable
        if not meta.is_file():
            pdir.mkdir(parents=True, exist_ok=True)
            return cls(pdir, settings, created())
        if not resume:
            raise ResumeMismatch(f"{pdir} holds an unfinished run: add --resume to complete it, or delete it to start over")
        stored = json.loads(meta.read_text())
        was = {**(added or {}), **stored["settings"]}
        same_weights(str(was.get("model_revision", "")), str(settings.get("model_revision", "")), str(pdir))
        diff = {k: (was.get(k), v) for k, v in settings.items() if was.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ResumeMismatch(f"{pdir}: cannot resume with other settings ({lines})")
        state = {k: v for k, v in stored.items() if k not in ("settings", "created")}
        return cls(pdir, stored["settings"], stored["created"], state)

    def save(self) -> None:
        files.write_json(self.dir / "run.json", {"settings": self.settings, "created": self.created, **self.state})

    def unit(self, k: int, suffix: str) -> Path:
        return self.dir / f"{k:06d}{suffix}"

    def remove(self) -> None:
        remove(self.dir)


def remove(pdir: Path) -> None:
    trash = pdir.with_name(f".{pdir.name}.removing-{os.getpid()}")
    os.replace(pdir, trash)
    shutil.rmtree(trash)
