"""Every hyperparameter and run setting in one object, validated in one place.

The defaults are the TensorFlow tutorial's: a zero-initialised linear model,
plain gradient descent at 0.5, batches of 100, 1,000 steps.
"""

from __future__ import annotations

import dataclasses
import math

OPTIMIZERS = ("sgd", "momentum", "adam")
LOOPS = ("fused", "per-step")
DEVICES = ("auto", "cpu", "gpu")


class ConfigError(ValueError):
    """A setting that cannot produce a sensible run."""


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist"
    data_dir: str | None = None
    model: str = "linear"
    hidden_sizes: tuple[int, ...] = (256,)
    activation: str = "relu"
    optimizer: str = "sgd"
    learning_rate: float = 0.5
    momentum: float = 0.9
    batch_size: int = 100
    num_steps: int = 1000
    seed: int = 0
    eval_every: int = 100
    # Upper bound on steps per compiled call of the fused loop; chunks also end at evaluations.
    steps_per_call: int = 1000
    unroll: int = 1
    loop: str = "fused"
    device: str = "auto"
    output_dir: str = "jaxlin-run"

    def validate(self, num_train_examples: int | None = None) -> "Config":
        """Raises ConfigError naming the first bad setting; returns self."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.loop not in LOOPS:
            raise ConfigError(f"unknown loop {self.loop!r}; choose one of {', '.join(LOOPS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise ConfigError(f"learning rate must be a finite number > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if num_train_examples is not None and self.batch_size > num_train_examples:
            raise ConfigError(
                f"batch size {self.batch_size} is larger than the training set "
                f"({num_train_examples} examples)"
            )
        if self.num_steps < 0:
            raise ConfigError(f"number of steps must be >= 0, got {self.num_steps}")
        for name in ("eval_every", "steps_per_call", "unroll"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.model == "mlp" and any(h < 1 for h in self.hidden_sizes):
            raise ConfigError(f"hidden sizes must be at least 1, got {list(self.hidden_sizes)}")
        return self

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
