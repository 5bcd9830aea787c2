"""What a run needs to go on, as a pytree: a single model's `TrainState`, a sweep's `SweepState`.

Each says how it is written into a checkpoint (`checkpoint_tree`) and read back, so the checkpoint
store handles any kind of run without knowing its fields. A sweep's on-disk form keeps the layout
of earlier jaxlin versions (`opt_state` holding the optimizer states and `frozen_at` together), so
their checkpoints still resume.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: int

    def checkpoint_tree(self) -> dict:
        return {"params": self.params, "opt_state": self.opt_state, "step": np.int64(self.step)}

    @classmethod
    def from_checkpoint_tree(cls, tree: dict) -> TrainState:
        return cls(tree["params"], tree["opt_state"], int(tree["step"]))


class SweepState(NamedTuple):
    """The members' params and optimizer states stacked along a leading axis, and `frozen_at[m]`:
    -1 while member m trains, else the (1-based) step whose loss was not finite."""

    params: Any
    opt_state: Any
    frozen_at: Any
    step: int

    def checkpoint_tree(self) -> dict:
        return {"params": self.params, "opt_state": (self.opt_state, self.frozen_at), "step": np.int64(self.step)}

    @classmethod
    def from_checkpoint_tree(cls, tree: dict) -> SweepState:
        opt_state, frozen_at = tree["opt_state"]
        return cls(tree["params"], opt_state, frozen_at, int(tree["step"]))
