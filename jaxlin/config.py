"""Every hyperparameter and run setting in one object, validated in one place.

The defaults are the TensorFlow tutorial's: a zero-initialised linear model,
plain gradient descent at 0.5, batches of 100, 1,000 steps. Each field carries
its help text (and choices) as metadata: the command line builds its flags
from these fields, so a new setting cannot lack a flag.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct

from jaxlin import optimizers
from jaxlin.optimizers import REGISTRY as OPTIMIZER_REGISTRY
from jaxlin.optimizers import SCHEDULES
from jaxlin.errors import ConfigError

# A live view of the optimizer table's names, not a copy: validation reads the table when it runs, so a
# name added to `optimizers.REGISTRY` later is accepted (the flag has no fixed choices: MODULE:NAME too).
OPTIMIZERS = OPTIMIZER_REGISTRY.keys()
LOOPS = ("fused", "per-step")
DEVICES = ("auto", "cpu", "gpu")
# The data sets jaxlin can fetch; with a data directory, any name (it only names the data).
DATASETS = ("mnist", "fashion_mnist")
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SOURCES = ("auto", "tfds")
MODELS = ("linear", "mlp", "cnn")
# A user's own model by reference: MODULE:NAME, MODULE importable (the current directory first), NAME in it.
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
MODEL_REFERENCE = re.compile(f"{_DOTTED}:{_DOTTED}")


def is_model_reference(name: str) -> bool:
    """Whether `name` refers to a user's model (MODULE:NAME) rather than one of `MODELS`."""
    return isinstance(name, str) and MODEL_REFERENCE.fullmatch(name) is not None
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu")
DOT_LAYOUTS = ("auto", "plain", "batched")  # see runtime/dot_layout.py
CHUNK_FORMS = ("auto", "scan", "host-loop")  # see runtime/chunk_form.py
CPU_CONVOLUTIONS = ("auto", "xla", "ynnpack")  # see runtime/cpu_convolutions.py
COMPUTE_DTYPES = ("float32", "bfloat16")  # see training/precision.py
MATMUL_PRECISIONS = ("default", "high", "highest")

# Settings that a resumed run may change: they do not change what the steps compute.
RESUMABLE_CHANGES = frozenset({"num_steps", "output_dir", "data_dir", "keep_checkpoints", "devices",
                               "checkpoint_every"})
# The sampler folds each epoch's number into a 32-bit PRNG key; the fused loop indexes
# the epoch order with int32.
MAX_EPOCHS = 2**32 - 2
MAX_WINDOW = 2**30
MAX_SEED = 2**63 - 1  # jax.random.key takes a signed 64-bit seed
# Beyond these, XLA's compile time or the params' memory grows past what a run can use:
# unrolling copies the step's program (unroll 20000 took 24 GB to compile), and 2**28 float32
# params are 1 GiB before the optimizer's copies.
MAX_UNROLL = 64
MAX_PARAMS = 2**28
# Training holds the learning rate in float32: 1e39 would become inf.
FLOAT32_MAX = 3.4028234663852886e38
# A sweep trains its members in one program: past this many, the grid is a mistake (2,000 × 2,000
# values took a minute and 1.4 GB just to list the members before --dry-run refused it).
MAX_SWEEP_MEMBERS = 2**16
INPUT_SIZE, NUM_CLASSES = 784, 10


# A full test-set evaluation of the linear model costs about as much as 33 of its training steps (on
# the 2-core CPU of bench/NOTES.md), so an evaluation every 100 steps would add a third to a long run;
# by default a run evaluates every 100 steps, at most this many times (at round intervals beyond).
AUTO_EVAL_BASE, AUTO_EVALUATIONS = 100, 50
DEFAULT_CHECKPOINT_EVERY = "5m"
_DURATION = re.compile(r"(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<unit>s|m|h)")
_SECONDS_PER = {"s": 1, "m": 60, "h": 3600}


def auto_eval_every(num_steps: int) -> int:
    """The default evaluation interval: 100 steps, or the smallest of 200, 500, 1000, 2000, ... that
    keeps `num_steps` to at most AUTO_EVALUATIONS evaluations (so the tutorial's 1,000 steps evaluate
    every 100, 21,000 every 500 and 100,000 every 2,000)."""
    interval, factors = AUTO_EVAL_BASE, (2, 2.5, 2)  # 100, 200, 500, 1000, 2000, 5000, ...
    index = 0
    while -(-num_steps // interval) > AUTO_EVALUATIONS:
        interval = int(interval * factors[index % 3])
        index += 1
    return interval


@dataclasses.dataclass(frozen=True)
class CheckpointInterval:
    """What `--checkpoint-every` asks for: `seconds` of wall time, or every `steps` steps, or `never`;
    neither (None, in records of a jaxlin before checkpoints by time): at every evaluation."""

    seconds: float | None = None
    steps: int | None = None
    never: bool = False

    @property
    def at_evaluations(self) -> bool:
        return self.seconds is None and self.steps is None and not self.never


def parse_checkpoint_every(value) -> int | str | None:
    """A `--checkpoint-every` value in its canonical form: an int (steps; 0: never), a duration such as
    "30s", "10m" or "1.5h", or None (at every evaluation: older records). Raises ConfigError."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        if value is not None and value < 0:
            raise ConfigError(f"checkpoint every must be >= 0 (0: never), got {value}")
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"-?[0-9]+", text):
            return parse_checkpoint_every(int(text))
        match = _DURATION.fullmatch(text)
        if match:
            seconds = float(match["number"]) * _SECONDS_PER[match["unit"]]
            if not math.isfinite(seconds):
                raise ConfigError(f"checkpoint every is too long a duration, got {value!r}")
            if seconds <= 0:
                raise ConfigError(f"checkpoint every must be a duration > 0 (use 0 for never), got {value!r}")
            return text
    raise ConfigError(f"checkpoint every must be a duration such as 30s, 10m or 1.5h, a number of steps, or 0 "
                      f"(never), got {value!r}")


def checkpoint_interval(value) -> CheckpointInterval:
    """The meaning of a (valid) `checkpoint_every` setting."""
    value = parse_checkpoint_every(value)
    if value is None:
        return CheckpointInterval()
    if isinstance(value, int):
        return CheckpointInterval(never=True) if value == 0 else CheckpointInterval(steps=value)
    match = _DURATION.fullmatch(value)
    return CheckpointInterval(seconds=float(match["number"]) * _SECONDS_PER[match["unit"]])


def parse_hidden_sizes(text: str) -> tuple[int, ...]:
    """"256,128" -> (256, 128): the MLP's hidden layer sizes as the command line gives them.

    Raises ConfigError (a ValueError) naming the text when a part is not an integer or a size is
    below 1."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"hidden sizes must be integers >= 1, got {text!r}")
    return sizes


def setting(default, help: str, *, choices=None, commands=("train",), aliases=(), metavar=None):
    """A Config field with what its command-line flag needs."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "commands": commands, "aliases": aliases, "metavar": metavar})


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = setting(
        "mnist", f"data set name: {' or '.join(DATASETS)} (which jaxlin can fetch), or any name for the IDX "
                 f"files in --data-dir (their images and labels give the shape and class count)",
        commands=("train", "evaluate"), metavar="NAME")
    data_dir: str | None = setting(
        None, "directory with the four IDX files (.gz or not); default: $JAXLIN_DATA_DIR, "
              "else --source", commands=("train", "evaluate"), metavar="DIR")
    source: str = setting(
        "auto", "where data comes from when no data dir is set: auto (jaxlin's cache, filled from public "
                "mirrors on first use) or tfds (tensorflow-datasets)", choices=SOURCES,
        commands=("train", "evaluate"))
    validation_size: int = setting(
        5000, "training examples held out for validation, the first N as in the tutorial")
    model: str = setting("linear", f"model: {', '.join(MODELS)}, or MODULE:NAME, a model of your own (an object "
                                   "with init(key) and apply(params, images), or a callable that returns one given "
                                   "image_shape and num_classes; see docs/extending.md)", metavar="NAME")
    hidden_sizes: tuple[int, ...] = setting((256,), "MLP hidden layer sizes", metavar="N[,N...]")
    activation: str = setting("relu", "MLP activation", choices=ACTIVATIONS)
    optimizer: str = setting("sgd", f"optimizer: {', '.join(OPTIMIZERS)}, or MODULE:NAME, a factory of your own "
                                    "called with learning_rate= (a float or an optax schedule) that returns an "
                                    "optax.GradientTransformation (see docs/extending.md)", metavar="NAME")
    learning_rate: float = setting(0.5, "learning rate (a schedule's peak)")
    momentum: float = setting(0.9, "momentum of the momentum optimizer")
    schedule: str = setting("constant", "learning-rate schedule over --num-steps: constant, cosine (decay to 0), "
                                        "warmup-cosine (linear warm-up, then cosine decay to 0), linear (decay to 0)",
                            choices=SCHEDULES)
    warmup_steps: int = setting(0, "steps of linear warm-up from 0 to the learning rate (schedules constant, "
                                   "warmup-cosine, linear)")
    weight_decay: float = setting(0.0, "weight decay: decoupled for adam (adamw), added to the gradients (L2) for "
                                       "sgd and momentum; 0: none")
    clip_norm: float | None = setting(None, "clip the gradients' global norm to X (optax.clip_by_global_norm); "
                                            "default: no clipping", metavar="X")
    batch_size: int = setting(100, "examples per step")
    num_steps: int = setting(1000, "training steps", aliases=("--steps",))
    seed: int = setting(0, "seed of the initial params and the batch order")
    data_seed: int | None = setting(None, "seed of the batch order alone (default: --seed's order)", metavar="N")
    eval_every: int | None = setting(
        None, f"evaluate test accuracy every N steps (default: every {AUTO_EVAL_BASE} steps, or at round intervals "
              f"(200, 500, 1000, ...) that keep a run to at most {AUTO_EVALUATIONS} evaluations)")
    checkpoint_every: str | int | None = setting(
        DEFAULT_CHECKPOINT_EVERY,
        "save the train state when this much wall time has passed since the last save (30s, 10m, 1.5h), at the "
        "next chunk boundary; or every N steps (N); or never (0). A fresh run also saves its first state, and "
        "every run saves after the last step and on SIGINT/SIGTERM (default: 5m)", metavar="TIME|N")
    keep_checkpoints: int = setting(3, "how many of the latest checkpoints to keep")
    # Upper bound on steps per compiled call of the fused loop; chunks also end at evaluations.
    steps_per_call: int = setting(1000, "most steps in one compiled call of the fused loop")
    unroll: int = setting(1, "steps unrolled per iteration of the fused loop's lax.scan (the scan chunk form only)")
    dot_layout: str = setting(
        "auto", "how the fused loop lays out the model's dots: plain, batched (a singleton vmap), or auto: "
                "batched for a single dense layer (the linear model) in the fused loop on one CPU device, else plain "
                "(a fixed rule, so the same flags give the same bits; see runtime/dot_layout.py)", choices=DOT_LAYOUTS)
    chunk_form: str = setting(
        "auto", "how the fused loop runs a chunk of steps: scan (one lax.scan program), host-loop (one compiled "
                "step on device-resident data, called per step), or auto: a fixed rule by model and platform "
                "(see runtime/chunk_form.py)", choices=CHUNK_FORMS)
    cpu_convolutions: str = setting(
        "auto", "on a CPU, who computes the convolutions of training and evaluation: ynnpack (the YNNPACK "
                "library, XLA's own choice in jaxlib 0.10), xla (XLA's own emitter), or auto: xla for a model with "
                "convolutions on a CPU, else ynnpack (a fixed rule, measured for the CNN; see "
                "runtime/cpu_convolutions.py) (default: auto)",
        choices=CPU_CONVOLUTIONS)
    compute_dtype: str = setting(
        "float32", "dtype of the model's computation in training: bfloat16 runs its matmuls and convolutions in "
                   "bfloat16 (params, gradients and the optimizer stay float32; for accelerators); evaluation "
                   "stays float32, so jaxlin evaluate of params.npz agrees with metrics.json", choices=COMPUTE_DTYPES)
    matmul_precision: str = setting(
        "default", "precision of the training step's matmuls and convolutions (jax.default_matmul_precision): "
                   "default (the platform's fastest, e.g. TF32 on some GPUs), high, or highest (full float32); "
                   "evaluation always uses default (default: default)",
        choices=MATMUL_PRECISIONS)
    loop: str = setting("fused", "fused: many steps per compiled call on device-resident data; "
                                 "per-step: one call per host-fed batch", choices=LOOPS)
    device: str = setting("auto", "where to compute; auto: JAX's first device", choices=DEVICES,
                          commands=("train", "evaluate"))
    devices: str = setting("1", "how many of --device's devices train data-parallel (a number, or all); "
                                "the batch size must divide by it", metavar="N|all")
    output_dir: str = setting("jaxlin-run", "directory for checkpoints, records, metrics, figures, params",
                              metavar="DIR")

    def __post_init__(self):
        # `--checkpoint-every 500` arrives as text: steps are kept as an int, durations as "10m" (bad
        # values are left for `validate` to name).
        try:
            object.__setattr__(self, "checkpoint_every", parse_checkpoint_every(self.checkpoint_every))
        except ConfigError:
            pass

    def validate(self, num_train_examples: int | None = None, input_size: int | None = None,
                 num_classes: int | None = None) -> Config:
        """Raises ConfigError naming the first bad setting; returns self. The data's sizes, once known
        (training examples, values per image, classes), are checked against too."""
        self.validate_fields(CONFIG_FIELDS)
        if num_train_examples is not None and self.batch_size > num_train_examples:
            raise ConfigError(
                f"batch size {self.batch_size} is larger than the training set "
                f"({num_train_examples} examples)"
            )
        if self.model == "mlp" and (not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes)):
            raise ConfigError(f"hidden sizes must be at least 1, got {list(self.hidden_sizes)}")
        # The data's sizes once it is loaded; before that (the command line checks settings first), MNIST's.
        sizes = (input_size or INPUT_SIZE, num_classes or NUM_CLASSES)
        if self.model == "mlp" and self.num_params(*sizes) > MAX_PARAMS:
            raise ConfigError(f"hidden sizes {list(self.hidden_sizes)} make {self.num_params(*sizes):,} params; "
                              f"at most {MAX_PARAMS:,}")
        optimizers.check_settings(self)
        if self.steps_per_call * self.batch_size > MAX_WINDOW:
            raise ConfigError(
                f"steps per call × batch size must be at most {MAX_WINDOW}, got "
                f"{self.steps_per_call} × {self.batch_size}")
        if num_train_examples and self.num_steps * self.batch_size // num_train_examples > MAX_EPOCHS:
            raise ConfigError(
                f"{self.num_steps} steps of {self.batch_size} examples span more than {MAX_EPOCHS} epochs "
                f"of {num_train_examples} examples")
        return self

    def validate_fields(self, names) -> Config:
        """The checks of the settings `names` that need no other setting (what `--resume` can check
        before it reads the checkpoint); raises ConfigError naming the first bad one."""
        for name in CONFIG_FIELDS:
            if name in names:
                check_setting(name, getattr(self, name))
        return self

    def num_params(self, input_size: int = INPUT_SIZE, num_classes: int = NUM_CLASSES) -> int:
        """The dense models' params for images of `input_size` values and `num_classes` classes."""
        sizes = (input_size, *(self.hidden_sizes if self.model == "mlp" else ()), num_classes)
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))

    def eval_interval(self) -> int:
        """Steps between evaluations: `eval_every`, or by default `auto_eval_every(num_steps)`."""
        return self.eval_every if self.eval_every is not None else auto_eval_every(self.num_steps)

    def with_eval_interval(self) -> Config:
        """This config with its evaluation interval fixed (what a run records, so that raising
        --num-steps on resume keeps the interval it started with)."""
        return self.replace(eval_every=self.eval_interval())

    def checkpoints(self) -> CheckpointInterval:
        """When this run saves its train state (see `checkpoint_interval`)."""
        return checkpoint_interval(self.checkpoint_every)

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def used_settings(self) -> dict:
        """The settings this run uses: no MLP shape for the linear model, no unused momentum."""
        settings = self.to_dict()
        if self.model != "mlp":
            del settings["hidden_sizes"], settings["activation"]
        takes = getattr(OPTIMIZER_REGISTRY.get(self.optimizer), "hyperparameters", ("learning_rate",))
        if "momentum" not in takes:
            del settings["momentum"]
        for name in ("warmup_steps", "weight_decay", "clip_norm"):  # off: not shown
            if not settings[name]:
                del settings[name]
        if self.data_seed is None:
            del settings["data_seed"]
        if self.loop != "fused":
            del settings["steps_per_call"], settings["unroll"], settings["dot_layout"], settings["chunk_form"]
        if "hidden_sizes" in settings:
            settings["hidden_sizes"] = list(settings["hidden_sizes"])
        return settings

    @classmethod
    def from_dict(cls, settings: dict) -> Config:
        """Inverse of `to_dict`; unknown keys are an error."""
        unknown = set(settings) - set(CONFIG_FIELDS)
        if unknown:
            raise ConfigError(f"unknown settings {sorted(unknown)}")
        values = dict(settings)
        values.setdefault("dot_layout", "plain")  # what runs saved before the choice existed used
        values.setdefault("chunk_form", "scan")  # likewise
        values.setdefault("cpu_convolutions", "ynnpack")  # likewise (XLA's default then)
        if "hidden_sizes" in values:
            values["hidden_sizes"] = tuple(values["hidden_sizes"])
        return cls(**values)


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def check_setting(name: str, value) -> None:
    """Raises ConfigError when one setting's value is bad whatever the others are."""
    label = name.replace("_", " ")
    choices = CONFIG_FIELDS[name].metadata["choices"]
    if choices and value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    if name == "dataset" and not (isinstance(value, str) and DATASET_NAME.fullmatch(value)):
        raise ConfigError(f"dataset must be a name of letters, digits, '.', '_' or '-', got {value!r}")
    if name == "validation_size" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigError(f"validation size must be an integer >= 0, got {value!r}")
    if name == "optimizer" and value not in OPTIMIZER_REGISTRY and not is_model_reference(value):
        raise ConfigError(f"unknown optimizer {value!r}; choose one of {', '.join(OPTIMIZER_REGISTRY)}, or give your "
                          f"own as MODULE:NAME")
    if name == "model" and value not in MODELS and not is_model_reference(value):
        raise ConfigError(f"unknown model {value!r}; choose one of {', '.join(MODELS)}, or give your own as "
                          f"MODULE:NAME")
    if name in ("learning_rate", "momentum"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{label} must be a number, got {value!r}")
        if name == "learning_rate" and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"learning rate must be a finite number > 0, got {value}")
        if name == "learning_rate" and not float32_finite(value):
            raise ConfigError(f"learning rate must be a finite number > 0 in float32 (at most "
                              f"{FLOAT32_MAX:.4g}), got {value}")
        if name == "learning_rate" and _to_float32(value) == 0:
            raise ConfigError(f"learning rate must be a finite number > 0 in float32, got {value} (0 in float32)")
        if name == "momentum" and not 0 <= value < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {value}")
    elif name in ("weight_decay", "clip_norm") and value is not None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{label} must be a number, got {value!r}")
        off = " (0: none)" if name == "weight_decay" else " (0: no clipping)"
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{label} must be a finite number >= 0{off}, got {value}")
        if not float32_finite(value):  # training holds it as float32
            raise ConfigError(f"{label} must be at most {FLOAT32_MAX:.4g} (training holds it in float32), got {value}")
    elif name == "warmup_steps" and value < 0:
        raise ConfigError(f"warmup steps must be >= 0, got {value}")
    elif name == "batch_size" and value < 1:
        raise ConfigError(f"batch size must be at least 1, got {value}")
    elif name == "num_steps" and value < 0:
        raise ConfigError(f"number of steps must be >= 0, got {value}")
    elif name in ("eval_every", "steps_per_call", "unroll", "keep_checkpoints") and value is not None and value < 1:
        raise ConfigError(f"{label} must be at least 1, got {value}")
    elif name == "unroll" and value > MAX_UNROLL:
        raise ConfigError(f"unroll must be at most {MAX_UNROLL}, got {value}")
    elif name == "devices" and not (value == "all" or (isinstance(value, str) and re.fullmatch(r"[0-9]+", value)
                                                       and int(value) >= 1)):
        raise ConfigError(f"devices must be a number >= 1 or all, got {value!r}")
    elif name == "checkpoint_every":
        parse_checkpoint_every(value)
    elif name == "hidden_sizes" and (not value or any(h < 1 for h in value)):
        raise ConfigError(f"hidden sizes must be at least 1, got {list(value)}")
    elif name in ("seed", "data_seed") and value is not None and not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{label} must be in [0, 2**63), got {value}")


def _to_float32(value: float) -> float:
    """`value` rounded to float32 (OverflowError when it has no finite float32)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def float32_finite(value: float) -> bool:
    """Whether `value` is finite once training holds it as float32 (1e39 is not)."""
    try:
        return math.isfinite(_to_float32(value))
    except OverflowError:
        return False


def check_no_repeats(flag: str, values) -> None:
    """A sweep's list must not name a member twice."""
    seen = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{flag} lists a value twice: {value}")
        seen.add(value)


def check_grid_size(sizes: dict[str, int]) -> int:
    """A sweep's member count from the lengths of its value lists (flag name -> length), refused
    past MAX_SWEEP_MEMBERS before any member is built."""
    members = math.prod(sizes.values())
    if members > MAX_SWEEP_MEMBERS:
        given = " × ".join(f"{size:,} {name}" for name, size in sizes.items() if size > 1)
        raise ConfigError(f"the sweep grid has {members:,} members ({given}); at most {MAX_SWEEP_MEMBERS:,}")
    return members


def resume_conflicts(saved: Config, wanted: Config) -> list[str]:
    """The settings in which `wanted` differs from a checkpoint's config, as flags with both values."""
    conflicts = []
    for name in CONFIG_FIELDS:
        if name not in RESUMABLE_CHANGES and _effective(saved, name) != _effective(wanted, name):
            conflicts.append(f"--{name.replace('_', '-')} {_show(getattr(wanted, name))} "
                             f"(the checkpoint has {_show(getattr(saved, name))})")
    if saved.schedule != "constant" and wanted.num_steps != saved.num_steps:
        # The schedule decays over the run's steps: another length is another schedule for every step.
        conflicts.append(f"--num-steps {wanted.num_steps} (the {saved.schedule} schedule decays over the "
                         f"checkpoint's {saved.num_steps} steps; start another run for another length)")
    return conflicts


def _effective(config: Config, name: str):
    """A setting as the run uses it: no data seed means the seed's batch order (`train.run_keys`)."""
    value = getattr(config, name)
    if name == "clip_norm":
        return value or None  # 0 and None: no clipping
    return config.seed if name == "data_seed" and value is None else value


def _show(value) -> str:
    if value is None:
        return "the default"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)
