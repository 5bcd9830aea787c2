"""The optimizer table: each optimizer's name, its optax factory and the hyperparameters it takes.

One place for what an optimizer is: `Config` validates `--optimizer` against this table (read when
it validates, so a name added to `REGISTRY` is accepted),
`jaxlin train` builds its optimizer from it, and `jaxlin sweep` builds the same factory
wrapped in `optax.inject_hyperparams`, which makes the hyperparameters part of the
optimizer state, so that one compiled program can give every member of a sweep its own
learning rate and momentum (`vmap` over the states). optax is imported only when an
optimizer is built: reading this table is free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jaxlin.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """`factory(**hyperparameters)` -> an optax GradientTransformation."""

    factory: Callable
    hyperparameters: tuple[str, ...]  # the Config fields it reads, in the factory's keyword names
    description: str


def _sgd(learning_rate):
    import optax

    return optax.sgd(learning_rate)


def _momentum(learning_rate, momentum):
    import optax

    return optax.sgd(learning_rate, momentum=momentum)


def _adam(learning_rate):
    import optax

    return optax.adam(learning_rate)


REGISTRY: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(_sgd, ("learning_rate",), "plain gradient descent (the tutorial's)"),
    "momentum": OptimizerSpec(_momentum, ("learning_rate", "momentum"), "gradient descent with momentum"),
    "adam": OptimizerSpec(_adam, ("learning_rate",), "Adam"),
}


def spec(name: str) -> OptimizerSpec:
    if name not in REGISTRY:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def hyperparameters(name: str, settings) -> dict:
    """The hyperparameters optimizer `name` takes, read from `settings` (a Config or anything with them)."""
    return {field: getattr(settings, field) for field in spec(name).hyperparameters}


def describe(name: str, settings) -> str:
    """e.g. "momentum(learning_rate=0.1, momentum=0.9)"."""
    values = ", ".join(f"{k}={v}" for k, v in hyperparameters(name, settings).items())
    return f"{name}({values})"


def make_optimizer(name: str, **values):
    """optimizer `name` with fixed hyperparameters (`jaxlin train`)."""
    return spec(name).factory(**values)


def make_injectable(name: str, **values):
    """optimizer `name` whose hyperparameters live in its state (`optax.inject_hyperparams`): values
    given to `init` under `vmap` become per-member arrays that `update` reads."""
    import optax

    return optax.inject_hyperparams(spec(name).factory)(**values)
