"""Building the optimizer from the settings: the optimizer table, learning-rate schedules, weight decay,
gradient clipping, and a user's own optimizer by reference (MODULE:NAME).

One place for what an optimizer is. `Config` validates `--optimizer` against `REGISTRY` (read when it
validates, so a name added to `REGISTRY` at run time is accepted) or as a reference; `jaxlin train`
builds its optimizer with `build`, and `jaxlin sweep` builds the same transformation wrapped in
`optax.inject_hyperparams` (`build_injectable`), which makes the numeric hyperparameters (learning
rate, momentum, weight decay, clip norm) part of the optimizer state, so that one compiled program
gives every member of a sweep its own (`vmap` over the states). The schedule's kind and its warm-up
are shapes of the program, not numbers in it: a sweep's members share them.

What is built, in the order the gradients meet it:

1. `optax.clip_by_global_norm(clip_norm)` when `--clip-norm` is given;
2. with `--weight-decay` > 0: for adam, decoupled decay (`optax.adamw`, the optimizer's own); for sgd
   and momentum, `optax.add_decayed_weights` before the optimizer (L2 decay added to the gradients,
   as `torch.optim.SGD(weight_decay=...)`); other optimizers refuse it;
3. the optimizer, given the learning rate: a float for the constant schedule without warm-up (the
   tutorial's `optax.sgd(0.5)` exactly), else `peak * unit(count)`, where `unit` is optax's schedule
   of peak 1 (`schedule_unit`), so that the peak can be a sweep member's traced number.

optax is imported only when an optimizer is built: reading this table is free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jaxlin.errors import ConfigError

SCHEDULES = ("constant", "cosine", "warmup-cosine", "linear")
# How an optimizer takes --weight-decay: "decoupled": its factory takes `weight_decay=` (adam: adamw);
# "added": optax.add_decayed_weights is chained before it; None: refused.
WEIGHT_DECAY_MODES = ("decoupled", "added", None)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """`factory(**hyperparameters)` -> an optax GradientTransformation; the learning rate it is given
    is a float or an optax schedule (a function of the step count)."""

    factory: Callable
    hyperparameters: tuple[str, ...]  # the Config fields it reads, in the factory's keyword names
    description: str
    weight_decay: str | None = None  # see WEIGHT_DECAY_MODES
    decoupled_name: str = ""  # what the optimizer is called with decoupled weight decay, e.g. adamw


def _sgd(learning_rate):
    import optax

    return optax.sgd(learning_rate)


def _momentum(learning_rate, momentum):
    import optax

    return optax.sgd(learning_rate, momentum=momentum)


def _adam(learning_rate, weight_decay=None):
    import optax

    # No weight decay: Adam itself (not adamw with 0), so the state and the bits are Adam's.
    return optax.adam(learning_rate) if weight_decay is None else optax.adamw(learning_rate, weight_decay=weight_decay)


REGISTRY: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(_sgd, ("learning_rate",), "plain gradient descent (the tutorial's)", "added"),
    "momentum": OptimizerSpec(_momentum, ("learning_rate", "momentum"), "gradient descent with momentum", "added"),
    "adam": OptimizerSpec(_adam, ("learning_rate",), "Adam", "decoupled", "adamw"),
}


def is_reference(name: str) -> bool:
    from jaxlin.config import is_model_reference  # the same MODULE:NAME syntax as --model's

    return is_model_reference(name) and name not in REGISTRY


def spec(name: str) -> OptimizerSpec:
    """The table's entry for `name`, or for a reference MODULE:NAME the user's factory (imported now)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if is_reference(name):
        return _reference_spec(name)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(REGISTRY)}, or give your own as "
                      f"MODULE:NAME")


def _reference_spec(reference: str) -> OptimizerSpec:
    from jaxlin.references import import_reference

    factory = import_reference(reference, "--optimizer", ConfigError)
    if not callable(factory):
        raise ConfigError(f"--optimizer {reference}: not a factory: expected a callable that takes learning_rate= "
                          f"and returns an optax.GradientTransformation")

    def call(learning_rate):
        try:
            made = factory(learning_rate=learning_rate)
        except Exception as err:
            raise ConfigError(f"--optimizer {reference}: calling it with learning_rate= failed: "
                              f"{type(err).__name__}: {_first_line(err)}") from err
        if not (callable(getattr(made, "init", None)) and callable(getattr(made, "update", None))):
            raise ConfigError(f"--optimizer {reference}: returned {type(made).__name__}, not an optax "
                              f"GradientTransformation (an object with init and update)")
        return made

    return OptimizerSpec(call, ("learning_rate",), f"your optimizer {reference}")


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


def hyperparameters(name: str, settings) -> dict:
    """The hyperparameters optimizer `name` takes, read from `settings` (a Config or anything with them)."""
    return {field: getattr(settings, field) for field in spec(name).hyperparameters}


# --- settings checks (no JAX) -----------------------------------------------------------------------


def check_settings(config, weight_decay_flag: str = "--weight-decay") -> None:
    """The optimizer settings that depend on each other; raises ConfigError naming the first bad one (a
    sweep's decays as `weight_decay_flag`). A reference is checked for its syntax only: `build` imports it."""
    warmup, steps = config.warmup_steps, config.num_steps
    if config.schedule == "cosine" and warmup:
        raise ConfigError(f"--warmup-steps {warmup}: the cosine schedule has no warm-up; use --schedule "
                          f"warmup-cosine")
    if warmup and warmup >= steps:
        raise ConfigError(f"--warmup-steps {warmup} must be fewer than --num-steps {steps}")
    if config.weight_decay and config.optimizer in REGISTRY and REGISTRY[config.optimizer].weight_decay is None:
        raise ConfigError(f"{weight_decay_flag}: the {config.optimizer} optimizer takes no weight decay")
    if config.weight_decay and config.optimizer not in REGISTRY:
        raise ConfigError(f"{weight_decay_flag}: your optimizer {config.optimizer} applies its own weight decay, if "
                          f"any; give it in its factory")


# --- schedules ---------------------------------------------------------------------------------------


def schedule_unit(kind: str, warmup_steps: int, num_steps: int):
    """Optax's schedule `kind` of peak 1 over `num_steps`, or None for a constant without warm-up: the
    learning rate at count t is `peak * unit(t)`."""
    import optax

    horizon = max(num_steps, 1)  # a run of 0 steps never reads it; optax refuses 0
    if kind == "constant":
        return optax.linear_schedule(0.0, 1.0, warmup_steps) if warmup_steps else None
    if kind == "cosine":
        return optax.cosine_decay_schedule(1.0, horizon)
    if kind == "warmup-cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps, horizon)
    if kind == "linear":
        if not warmup_steps:
            return optax.linear_schedule(1.0, 0.0, horizon)
        return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup_steps),
                                     optax.linear_schedule(1.0, 0.0, horizon - warmup_steps)], [warmup_steps])
    raise ConfigError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


def learning_rate_schedule(config, peak=None):
    """The learning rate `config` trains with: a float (constant, no warm-up) or a function of the step
    count. `peak` (default: config.learning_rate) may be a traced number (a sweep member's)."""
    peak = config.learning_rate if peak is None else peak
    unit = schedule_unit(config.schedule, config.warmup_steps, config.num_steps)
    if unit is None:
        return peak
    return lambda count: peak * unit(count)


def describe_schedule(config, peak) -> str:
    """e.g. "0.5", "cosine(0.5, 1000 steps)", "warmup-cosine(0.001, warmup 100, 5000 steps)"."""
    if config.schedule == "constant" and not config.warmup_steps:
        return f"{peak}"
    parts = [f"{peak}"] + [f"warmup {config.warmup_steps}"] * bool(config.warmup_steps)
    parts += [f"{config.num_steps} steps"] * (config.schedule != "constant")
    return f"{config.schedule}({', '.join(parts)})"


# --- building ----------------------------------------------------------------------------------------


def _factory(config) -> Callable:
    """(learning_rate, momentum, weight_decay, clip_norm) -> the transformation `config` describes with
    those numbers; the schedule's kind and warm-up are `config`'s. None: that part is off."""
    chosen = spec(config.optimizer)

    def make(learning_rate, momentum=None, weight_decay=None, clip_norm=None):
        import optax

        values = {"learning_rate": learning_rate_schedule(config, learning_rate)}
        if "momentum" in chosen.hyperparameters:
            values["momentum"] = momentum
        if weight_decay is not None and chosen.weight_decay == "decoupled":
            optimizer = chosen.factory(**values, weight_decay=weight_decay)
        else:
            optimizer = chosen.factory(**values)
            if weight_decay is not None:
                optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optimizer)
        if clip_norm is not None:
            optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)
        return optimizer

    return make


def _own_values(config) -> dict:
    """The numbers `config`'s optimizer is built with; weight decay and clipping only when on."""
    values = hyperparameters(config.optimizer, config)
    if config.weight_decay:
        values["weight_decay"] = config.weight_decay
    if config.clip_norm:
        values["clip_norm"] = config.clip_norm
    return values


def build(config):
    """The optax transformation `config` trains with (`jaxlin train`); the defaults give `optax.sgd(0.5)`."""
    return _factory(config)(**_own_values(config))


def check_builds(config, model) -> None:
    """Builds `config`'s optimizer and traces its init and one update on `model`'s params (what its
    optimizer sees: `trained_part` where the model has one) with `jax.eval_shape`, computing nothing;
    raises ConfigError in one line when it does not run (a reference that is not an optimizer, or one
    that does not take these params) or its update is not (updates of the params' structure and shapes,
    a state like its init's)."""
    check_traces(build(config), model, f"--optimizer {config.optimizer}")


def check_traces(optimizer, model, label: str) -> None:
    """`optimizer`'s init and one update traced on `model`'s trained params (see `check_builds`); a
    ConfigError starting with `label` when they do not run or return something a training step cannot use."""
    import jax

    def trained(key):
        params = model.init(key)
        return model.trained_part(params) if hasattr(model, "trained_part") else params

    params = jax.eval_shape(trained, jax.random.key(0))
    try:
        state = jax.eval_shape(optimizer.init, params)
        out = jax.eval_shape(optimizer.update, params, state, params)
    except Exception as err:
        raise ConfigError(f"{label}: its init and update do not run on the model's params: "
                          f"{type(err).__name__}: {_first_line(err)}") from err
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ConfigError(f"{label}: its update returns {_shown(out)}; expected (updates, state), the updates "
                          f"of the params' structure and shapes")
    updates, new_state = out
    if _shapes(updates) != _shapes(params):
        raise ConfigError(f"{label}: its update returns updates that are not of the params' structure and shapes "
                          f"({_leaves_shown(updates)}; the params: {_leaves_shown(params)})")
    if _shapes(new_state) != _shapes(state):
        raise ConfigError(f"{label}: its update returns a state unlike the one its init returns (another "
                          f"structure or shapes): a training step could not carry it")


def check_custom(optimizer, config) -> None:
    """`fit(..., optimizer=...)`: refuses, in one ConfigError, anything but an optax GradientTransformation,
    and a config whose optimizer settings it would silently drop (they build the config's optimizer, which
    the transformation replaces)."""
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        hint = (f"; to name one, set Config(optimizer={optimizer!r}) and leave optimizer= out"
                if isinstance(optimizer, str) else "")
        raise ConfigError(f"fit's optimizer= must be an optax.GradientTransformation (an object with init and "
                          f"update), not {type(optimizer).__name__}{hint}")
    dropped = [f"{name}={getattr(config, name)!r}" for name, off in
               (("schedule", "constant"), ("warmup_steps", 0), ("weight_decay", 0), ("clip_norm", None))
               if getattr(config, name) not in (off, None, 0, 0.0)]
    if dropped:
        raise ConfigError(f"the Config sets {', '.join(dropped)}, which build the config's optimizer; fit's "
                          f"optimizer= replaces it: put them in your transformation (optax.chain(...)) or leave "
                          f"optimizer= out")


def _shapes(tree):
    import jax

    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [tuple(getattr(leaf, "shape", ())) for leaf in leaves]


def _shown(value) -> str:
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    shape = getattr(value, "shape", None)
    return f"{value.dtype}{list(shape)}" if shape is not None else type(value).__name__


def _leaves_shown(tree, most: int = 4) -> str:
    import jax

    leaves = jax.tree.leaves(tree)
    shown = ", ".join(_shown(leaf) for leaf in leaves[:most]) + (", ..." if len(leaves) > most else "")
    return f"{len(leaves)} arrays: {shown}" if leaves else "no arrays"


def sweep_hyperparameters(base, members) -> tuple[str, ...]:
    """The hyperparameters a sweep injects per member: its optimizer's, weight decay when any member
    decays, the clip norm when any member clips (the others then get 0 and no clipping: inf)."""
    names = spec(base.optimizer).hyperparameters
    names += ("weight_decay",) if any(m.weight_decay for m in members) else ()
    names += ("clip_norm",) if any(m.clip_norm for m in members) else ()
    return names


def member_hyperparameters(member, names) -> dict:
    """A sweep member's numbers for `names` (see `sweep_hyperparameters`)."""
    values = {name: getattr(member, name) for name in names}
    if "clip_norm" in values and not values["clip_norm"]:
        values["clip_norm"] = float("inf")  # never reached: the gradients pass unchanged
    return values


def build_injectable(base, **values):
    """`base`'s optimizer whose numbers `values` (see `sweep_hyperparameters`) live in its state
    (`optax.inject_hyperparams`): values given to `init` under `vmap` become per-member arrays that
    `update` reads, the schedule computed from each member's own peak learning rate."""
    import optax

    return optax.inject_hyperparams(_factory(base))(**values)


def describe(config, per_member: tuple[str, ...] = ()) -> str:
    """What trains, e.g. "sgd(learning_rate=0.5)", "adamw(learning_rate=warmup-cosine(0.001, warmup 100,
    5000 steps), weight_decay=0.0001), clip_norm=1.0" or "mymod:make_opt(learning_rate=0.01)"; the
    settings in `per_member` (a sweep's varied ones) read "per member"."""
    chosen = spec(config.optimizer) if config.optimizer in REGISTRY else None

    def value(name):
        return "per member" if name in per_member else getattr(config, name)

    names = chosen.hyperparameters if chosen else ("learning_rate",)
    shown = {name: value(name) for name in names}
    shown["learning_rate"] = describe_schedule(config, value("learning_rate"))
    decays = config.weight_decay or "weight_decay" in per_member
    name = config.optimizer
    extra = []
    if decays and chosen and chosen.weight_decay == "decoupled":
        name, shown["weight_decay"] = chosen.decoupled_name or name, value("weight_decay")
    elif decays:
        extra.append(f"weight_decay={value('weight_decay')} (added to the gradients)")
    if config.clip_norm or "clip_norm" in per_member:
        extra.append(f"clip_norm={value('clip_norm') or 'off'}")
    text = f"{name}({', '.join(f'{k}={v}' for k, v in shown.items())})"
    return ", ".join([text, *extra])


# Kept for callers by name (bench/experiments): one registered optimizer with fixed numbers.
def make_optimizer(name: str, **values):
    """optimizer `name` with fixed hyperparameters."""
    return spec(name).factory(**values)


def make_injectable(name: str, **values):
    """optimizer `name` whose hyperparameters live in its state (`optax.inject_hyperparams`)."""
    import optax

    return optax.inject_hyperparams(spec(name).factory)(**values)
