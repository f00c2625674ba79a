"""Experiment definitions: a named, versioned set of trace settings in a TOML file.

A definition (`experiments/*.toml`) fixes what makes an experiment that experiment: the
span, the prompt format, the variants, the components and the defaults of the method, so
that a run is named by what it is ("subject v1") rather than by a command line. Its keys
are `RunConfig`'s field names; options given on the command line override them. The
label is stored in the cube (attr `definition`), so a cube says which definition made it.

    name = "subject"
    version = 1
    description = "Experiment 1: ..."
    [trace]
    experiment = "subject"
    components = "hidden,mlp,attn"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

# What an experiment fixes; where the data, the model and the machine are is the run's business.
TRACE_KEYS = ("experiment", "corruption", "answer", "prompt_format", "samples", "window", "noise_level", "seed",
              "components", "max_cf", "replace", "reverse")
TYPES = {"samples": int, "window": int, "seed": int, "max_cf": int, "replace": bool, "reverse": bool,
         "noise_level": (str, int, float)}  # "s3" or a plain number


@dataclass(frozen=True)
class Definition:
    name: str
    version: int
    description: str
    trace: dict  # RunConfig field -> value

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


def load(path: str | Path) -> Definition:
    """Read and check a definition; every problem names the file and the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the definition ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    unknown = set(raw) - {"name", "version", "description", "trace"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; expected name, version, description, [trace]")
    name, version = raw.get("name"), raw.get("version")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: key 'name': a non-empty string is required")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"{path}: key 'version': a positive integer is required")
    trace = raw.get("trace", {})
    if not isinstance(trace, dict) or "experiment" not in trace:
        raise ConfigError(f"{path}: table [trace] with at least 'experiment' is required")
    for key, value in trace.items():
        if key not in TRACE_KEYS:
            raise ConfigError(f"{path}: [trace] key '{key}' is not a setting of an experiment; known: {', '.join(TRACE_KEYS)}")
        want = TYPES.get(key, str)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise ConfigError(f"{path}: [trace] key '{key}': expected {names}, got {value!r}")
    if "noise_level" in trace:
        trace["noise_level"] = str(trace["noise_level"])
    return Definition(name, version, str(raw.get("description", "")), dict(trace))
