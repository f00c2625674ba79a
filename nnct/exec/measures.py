"""What an executor measured of one example: `Measures`, the cube's measured variables.

Both executors return it: the engine (`engine`, every cell patched) and attribution patching
(`attribution`, every cell estimated), so that a run, a resumed run and a remote session
keep and send one kind of result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


# Mean ablation, per example (in `Measures.runs`): 1 where the cells took the reference's mean
# at each position, 0 where they took its mean over all positions.
MEAN_BY_POSITION = "mean_by_position"


@dataclass
class Measures:
    """What an executor measured of one example (the cube's measured variables; p and
    logits are means over the corrupted rows)."""

    p_clean: np.ndarray  # [answer]
    p_corrupt: np.ndarray  # [answer]
    logit_clean: np.ndarray  # [answer]
    logit_corrupt: np.ndarray  # [answer]
    clean_top1: int  # the clean prompt's most probable next token (ROME's "known" filter)
    # the restored cells per cube variable: p_restored [token, layer, component, answer],
    # p_restored_head [token, layer, head, answer], ... and the logits alike (`components`);
    # attribution patching's estimates under their own names (ie_atp, ...)
    restored: dict[str, np.ndarray]
    # the extra readouts (`interventions.readouts`) of the clean and corrupted runs:
    # <name>_clean, <name>_corrupt, [answer] or a scalar for an answer-free readout
    runs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def p_restored(self) -> np.ndarray:
        return self.restored["p_restored"]

    @property
    def logit_restored(self) -> np.ndarray:
        return self.restored["logit_restored"]
