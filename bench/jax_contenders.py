"""jaxlin's own loops as benchmark contenders: per-step, fused, and many models under vmap."""

from __future__ import annotations

import functools
import itertools
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.common import (HIDDEN_SIZES, INPUT_SIZE, SHARED_MODELS, NextBatch, optimizer_config, shared_params,
                          thread_settings, timed, train_until)
from jaxlin.models import get_model
from jaxlin.runtime import cpu_convolutions
from jaxlin.runtime.chunk_form import HostLoopChunk
from jaxlin.runtime.profiling import DEFAULT_CHUNKS, ProfileSteps, StepTrace, traced_chunks
from jaxlin.training.evaluate import Evaluator
from jaxlin.training.sampler import EpochSampler, epoch_window, shuffled_epoch
from jaxlin.training.trainer import (dropout_key, fused_train_chunk, is_stateful, make_fused_train, make_optimizer,
                                     make_train_step)


def make_accuracy_fn(apply_fn, images_uint8, labels):
    """params -> test accuracy (a float) on a split, through jaxlin's `Evaluator` (what `jaxlin
    train` reports), for the contenders and the TensorFlow equivalence test."""
    return Evaluator(apply_fn, images_uint8, labels).accuracy


@functools.cache
def _model(model: str):
    """jaxlin's model `model` for MNIST's images: a built-in name (the MLP at jaxlin's hidden sizes) or a
    user's MODULE:NAME, imported from the working directory as `jaxlin train --model` does (once per
    process: each repeat restarts from its params, not from a fresh import)."""
    return get_model(model, hidden_sizes=HIDDEN_SIZES, input_size=INPUT_SIZE)


# The seed of the dropout keys a model with a training mode trains with (what `jaxlin train --seed 0` uses).
DROPOUT_SEED = 0


def _jax_params(model: str, seed: int = 0):
    """The shared starting point (see bench.common), or the model's own init for the other models."""
    if model not in SHARED_MODELS:
        return _model(model).init(jax.random.key(seed))
    return jax.tree.map(jnp.asarray, shared_params(model, seed))


def chunks(num_steps: int, steps_per_call: int) -> list[tuple[int, int]]:
    """The (first step, length) of each call a contender's `run` makes: `steps_per_call` steps each, the last
    call holding the rest."""
    return [(start, min(steps_per_call, num_steps - start)) for start in range(0, num_steps, steps_per_call)]


class CaseTrace(StepTrace):
    """`jaxlin train --profile`'s trace (`jaxlin.runtime.profiling.StepTrace`: whole chunks, started before a
    chunk is dispatched, stopped once the device has finished its last one, the same line to open it) around
    one untimed run of a benchmark case. That run follows the case's set-up, which has compiled it and run it
    once, so by default the trace holds the run's first `DEFAULT_CHUNKS` chunks (a training session skips
    its first, which compiles)."""

    def plan(self, chunks, first_step: int, num_steps: int) -> None:
        if self.steps.start is None:
            self.set_window(list(itertools.islice(chunks, DEFAULT_CHUNKS)))
        else:
            self.set_window(traced_chunks(chunks, self.steps))
        if not self.window:
            self.done = True
            self.log(f"{self.steps.flag}: this case trains steps {first_step} to {num_steps}, no "
                     "step of those; no profile written")


def _flat_params(params) -> dict:
    return {f"layers/{i}/{k}": np.asarray(v) for i, layer in enumerate(params) for k, v in layer.items()}


class _JaxContender:
    """`optimizer` and `learning_rate` (the worker's --optimizer and --learning-rate) replace the tutorial's
    plain SGD (see `bench.common.optimizer_config`)."""

    framework = "jax"

    def __init__(self, data: dict, optimizer: str | None = None, learning_rate: float | None = None):
        self.data = data
        self.optimizer_choice = (optimizer, learning_rate)
        self.device = jax.devices()[0]
        self.images_uint8 = jnp.asarray(data["train_uint8"])
        self.labels = jnp.asarray(data["train_labels"])

    def info(self) -> dict:
        import jaxlib

        return {"framework": "jax", "version": jax.__version__, "jaxlib": jaxlib.__version__,
                "optax": optax.__version__, "device": str(self.device), "device_kind": self.device.device_kind,
                "platform": platform.platform(), "threads": thread_settings()}

    def _cached(self, name: str, make):
        """One compiled function per (name, model, learning rate) for the train_on/time_to_accuracy runs:
        a function built for one model's apply and learning rate must not serve another's."""
        cache = self.__dict__.setdefault("_functions", {})
        key = (name, *self._model_key)
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def _model(self, model: str):
        return _model(model)

    def _start(self, model: str):
        """Fresh params and optimizer state of `model`. A model with a training mode (dropout, batch-norm
        statistics: `Model.train_apply`) is timed as `jaxlin train` trains it: the optimizer state covers its
        trained leaves only, and each step takes its global step and the run's dropout key (`_key_args`)."""
        self.model_object = self._model(model)
        self.apply = self.model_object.apply
        settings = optimizer_config(model, *self.optimizer_choice)
        self.optimizer = make_optimizer(settings)
        self._model_key = (model, settings.optimizer, settings.learning_rate)
        self._dropout_key = dropout_key(DROPOUT_SEED) if is_stateful(self.model_object) else None
        params = _jax_params(model)
        return params, self.optimizer.init(self.model_object.trained_part(params))

    def _key_args(self, step: int) -> tuple:
        """What a stateful model's step or chunk takes after its batch (its first global step and the dropout
        key, see `jaxlin.training.trainer.fused_train_chunk`); nothing for the others."""
        if self._dropout_key is None:
            return ()
        return np.int32(step), self._dropout_key

    def _linear_only(self, model: str) -> None:
        """The many-model and data-parallel contenders train plain update steps: a model with a training mode
        is refused in one line (the runner times only the linear model with them)."""
        if is_stateful(self._model(model)):
            raise ValueError(f"{type(self).__name__} does not time a model with a training mode ({model}); "
                             "jaxlin_per_step and jaxlin_fused do")

    def run(self, trace: StepTrace | None = None) -> dict:
        """One timed run of the case set up (`setup`); `trace` (a `CaseTrace`, see `profile`) is told of each
        chunk as it is dispatched."""
        raise NotImplementedError

    def profile(self, directory: str, start: int | None = None, stop: int | None = None) -> dict:
        """One more run of the case set up, untimed, under a `jax.profiler` trace of the chunks holding steps
        `start` to `stop` (both None: see `CaseTrace`) written into `directory`. Returns the line saying where
        the trace is and how to open it (or why none was written) and the steps it holds."""
        lines: list[str] = []
        trace = CaseTrace(directory, ProfileSteps(start, stop), log=lines.append)
        try:
            self.run(trace)
        finally:
            trace.close()
        window = trace.window
        return {"traced": bool(window), "lines": lines,
                "steps": [window[0][0], window[-1][0] + window[-1][1]] if window else None}

    def peak(self, size: int = 2048, repeats: int = 5) -> dict:
        """The machine's large-matmul rate through XLA: the best of `repeats` float32 (size x size) products."""
        a, b = (jax.random.normal(k, (size, size), jnp.float32) for k in jax.random.split(jax.random.key(0)))
        matmul = jax.jit(jnp.matmul)
        jax.block_until_ready(matmul(a, b))
        best = min(timed(lambda: jax.block_until_ready(matmul(a, b)))[0] for _ in range(repeats))
        return {"gflops": 2 * size**3 / best / 1e9, "size": size, "seconds": best}

    def flops(self, model: str, batch_size: int) -> dict:
        """FLOPs of one training step of `model` (forward, backward, update), from XLA's cost analysis of
        jaxlin's compiled update: the same arithmetic every contender does for that model."""
        params, opt_state = self._start(model)
        images = jnp.zeros((batch_size, 784), jnp.float32)
        labels = jnp.zeros((batch_size,), jnp.int32)
        compiled = make_train_step(self.apply, self.optimizer, model=self.model_object).lower(
            params, opt_state, images, labels, *self._key_args(0)).compile()
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return {"flops_per_step": float(analysis["flops"]), "source": "XLA cost analysis of jaxlin's update step"}

    def train_on(self, model: str, order_file: str, out_file: str) -> dict:
        """Trains on given batch indices (num_steps, B); saves params; reports test accuracy."""
        params, opt_state = self._train_on_order(np.load(order_file), *self._start(model))
        np.savez(out_file, **_flat_params(params))
        return {"test_accuracy": self._accuracy(params)}

    def _accuracy(self, params) -> float:
        if not hasattr(self, "_accuracy_fn"):
            self._accuracy_fn = make_accuracy_fn(
                self.apply, jnp.asarray(self.data["test_uint8"]), jnp.asarray(self.data["test_labels"]))
        return self._accuracy_fn(params)

    def time_to_accuracy(self, model: str, batch_size: int, eval_every: int, max_steps: int,
                         target: float, order_file: str) -> dict:
        order, state = np.load(order_file), list(self._start(model))

        def train_steps(start, count):
            state[:] = self._train_on_order(order[start:start + count], *state)

        return train_until(train_steps, lambda: self._accuracy(state[0]), eval_every, max_steps, target)


def choose_forms(model: str, batch_size: int, unroll: int = 1, loop: str = "fused") -> tuple[str, str, str]:
    """The dot layout, chunk form and CPU convolutions `jaxlin train` would use here (fixed rules, see
    `jaxlin.runtime.dot_layout`, `jaxlin.runtime.chunk_form` and `jaxlin.runtime.cpu_convolutions`)."""
    from jaxlin.runtime import chunk_form, dot_layout as layout
    from jaxlin.config import Config
    from jaxlin.runtime.devices import resolve_placement

    config = Config(model=model, hidden_sizes=HIDDEN_SIZES, batch_size=batch_size, unroll=unroll, loop=loop)
    placement, model_object = resolve_placement(), _model(model)
    return (layout.choose(config, model_object, placement), chunk_form.choose(config, model_object, placement),
            cpu_convolutions.choose(config, model_object, placement))


class JaxlinPerStep(_JaxContender):
    """One jitted update per step, batches gathered on the host (the tutorial's loop)."""

    def setup(self, model: str, batch_size: int, num_steps: int) -> dict:
        params, opt_state = self._start(model)
        self.model, self.batch_size, self.num_steps = model, batch_size, num_steps
        self.step = make_train_step(self.apply, self.optimizer, model=self.model_object)
        images, labels = self.data["train_images"][:batch_size], self.data["train_labels"][:batch_size]
        options = cpu_convolutions.compiler_options(choose_forms(model, batch_size, loop="per-step")[2])
        compile_seconds, self.compiled = timed(lambda: self.step.lower(params, opt_state, images, labels,
                                                                       *self._key_args(0)).compile(options))
        warm_up, _ = timed(self.run)
        return {"compile_seconds": compile_seconds, "warm_up_seconds": warm_up}

    def run(self, trace: StepTrace | None = None) -> dict:
        params, opt_state = self._start(self.model)
        next_batch = NextBatch(len(self.data["train_labels"]))
        images, labels = self.data["train_images"], self.data["train_labels"]
        if trace is not None:  # each step is a chunk of one
            trace.plan(chunks(self.num_steps, 1), 0, self.num_steps)
        start = time.perf_counter()
        for step in range(self.num_steps):
            indices = next_batch(self.batch_size)
            if trace is not None:
                trace.before(step, (params, opt_state))
            params, opt_state, loss = self.compiled(params, opt_state, images[indices], labels[indices],
                                                    *self._key_args(step))
            if trace is not None:
                trace.after(step, (params, opt_state, loss))
        loss = float(jax.block_until_ready(loss))
        return {"seconds": time.perf_counter() - start, "loss": loss}

    def _train_on_order(self, order, params, opt_state):
        step = self._cached("step", lambda: make_train_step(self.apply, self.optimizer, model=self.model_object))
        for number, indices in enumerate(order):
            params, opt_state, _ = step(params, opt_state, self.data["train_images"][indices],
                                        self.data["train_labels"][indices], *self._key_args(number))
        return params, opt_state


class JaxlinFused(_JaxContender):
    """K steps per compiled call on device-resident uint8 data, batches from jaxlin's on-device sampler."""

    def setup(self, model: str, batch_size: int, num_steps: int, steps_per_call: int = 1000,
              unroll: int = 1) -> dict:
        params, opt_state = self._start(model)
        self.model, self.batch_size, self.num_steps = model, batch_size, num_steps
        self.steps_per_call = min(steps_per_call, num_steps)
        if num_steps % self.steps_per_call:
            raise ValueError(f"num_steps {num_steps} is not a multiple of steps_per_call {steps_per_call}")
        sampler = EpochSampler(jax.random.key(0), len(self.data["train_labels"]), batch_size)
        self.dot_layout, self.chunk_form, self.cpu_convolutions = choose_forms(model, batch_size, unroll)
        fused = make_fused_train(self.apply, self.optimizer, unroll, dot_layout=self.dot_layout,
                                 model=self.model_object)
        length = 1 if self.chunk_form == "host-loop" else self.steps_per_call
        order = sampler.warm_up(length)
        compile_seconds, self.compiled = timed(lambda: fused.lower(
            params, opt_state, self.images_uint8, self.labels, order, 0, *self._key_args(0),
            batch_size=batch_size, num_steps=length).compile(cpu_convolutions.compiler_options(self.cpu_convolutions)))
        if length != self.steps_per_call:  # as `jaxlin train` runs it: one compiled step called per step
            self.compiled = HostLoopChunk(self.compiled, num_carry=2, offset_at=5,
                                          start_at=6 if self._dropout_key is not None else None,
                                          batch_size=batch_size, num_steps=self.steps_per_call)
        warm_up, _ = timed(self.run)
        return {"compile_seconds": compile_seconds, "warm_up_seconds": warm_up, "dot_layout": self.dot_layout,
                "chunk_form": self.chunk_form, "cpu_convolutions": self.cpu_convolutions}

    def run(self, trace: StepTrace | None = None) -> dict:
        params, opt_state = self._start(self.model)
        jax.block_until_ready(params)
        sampler = EpochSampler(jax.random.key(0), len(self.data["train_labels"]), self.batch_size)
        if trace is not None:
            trace.plan(chunks(self.num_steps, self.steps_per_call), 0, self.num_steps)
        start = time.perf_counter()
        for first_step in range(0, self.num_steps, self.steps_per_call):
            order, offset = sampler.window(first_step, self.steps_per_call)
            if trace is not None:
                trace.before(first_step, (params, opt_state))
            params, opt_state, losses = self.compiled(params, opt_state, self.images_uint8, self.labels,
                                                      order, offset, *self._key_args(first_step))
            if trace is not None:
                trace.after(first_step, (params, opt_state, losses))
        loss = float(jax.block_until_ready(losses)[-1])
        return {"seconds": time.perf_counter() - start, "loss": loss}

    def _train_on_order(self, order, params, opt_state):
        fused = self._cached("fused", lambda: make_fused_train(self.apply, self.optimizer, model=self.model_object))
        num_steps, batch_size = order.shape
        params, opt_state, _ = fused(params, opt_state, self.images_uint8, self.labels,
                                     jnp.asarray(order.ravel()), 0, *self._key_args(0), batch_size=batch_size,
                                     num_steps=num_steps)
        return params, opt_state


class JaxlinDataParallel(_JaxContender):
    """jaxlin's fused loop over a 1-D mesh of `devices` devices (`jaxlin.runtime.devices`): the data and
    state replicated, each step's batch sharded, the gradient all-reduced by XLA. On a CPU the
    worker sees simulated devices (JAX_NUM_CPU_DEVICES) that share the same cores."""

    def setup(self, model: str, batch_size: int, num_steps: int, devices: int = 1,
              steps_per_call: int = 1000) -> dict:
        self._linear_only(model)
        from jaxlin.runtime.devices import resolve_placement

        self.placement = resolve_placement("auto", devices, batch_size)
        self.model, self.batch_size, self.num_steps = model, batch_size, num_steps
        self.steps_per_call = min(steps_per_call, num_steps)
        params, opt_state = self._start(model)
        fused = make_fused_train(self.apply, self.optimizer, 1, self.placement)
        self.images, self.labels_on_mesh = self.placement.put((self.data["train_uint8"], self.data["train_labels"]))
        order = EpochSampler(jax.random.key(0), len(self.data["train_labels"]), batch_size,
                             place=self.placement.put).warm_up(self.steps_per_call)
        params, opt_state = self.placement.put((params, opt_state))
        compile_seconds, self.compiled = timed(lambda: fused.lower(
            params, opt_state, self.images, self.labels_on_mesh, order, 0,
            batch_size=batch_size, num_steps=self.steps_per_call).compile())
        warm_up, _ = timed(self.run)
        return {"compile_seconds": compile_seconds, "warm_up_seconds": warm_up, "devices": devices}

    def run(self, trace: StepTrace | None = None) -> dict:
        params, opt_state = self.placement.put(self._start(self.model))
        jax.block_until_ready(params)
        sampler = EpochSampler(jax.random.key(0), len(self.data["train_labels"]), self.batch_size,
                               place=self.placement.put)
        if trace is not None:
            trace.plan(chunks(self.num_steps, self.steps_per_call), 0, self.num_steps)
        start = time.perf_counter()
        for first_step in range(0, self.num_steps, self.steps_per_call):
            order, offset = sampler.window(first_step, self.steps_per_call)
            if trace is not None:
                trace.before(first_step, (params, opt_state))
            params, opt_state, losses = self.compiled(params, opt_state, self.images, self.labels_on_mesh,
                                                      order, offset)
            if trace is not None:
                trace.after(first_step, (params, opt_state, losses))
        loss = float(jax.block_until_ready(losses)[-1])
        return {"seconds": time.perf_counter() - start, "loss": loss}


class JaxlinVmap(_JaxContender):
    """M independent linear models (own batch orders) trained at once under jax.vmap."""

    def setup(self, model: str, batch_size: int, num_steps: int, num_models: int = 8,
              steps_per_call: int = 1000) -> dict:
        self._linear_only(model)
        self.model, self.batch_size, self.num_steps = model, batch_size, num_steps
        self.num_models, self.steps_per_call = num_models, min(steps_per_call, num_steps)
        self._start(model)
        chunk = functools.partial(fused_train_chunk(self.apply, self.optimizer),
                                  batch_size=batch_size, num_steps=self.steps_per_call)
        # Each model has its own params, optimizer state and batch order; the data is shared.
        self.chunk = jax.jit(jax.vmap(chunk, in_axes=(0, 0, None, None, 0, None)), donate_argnums=(0, 1))
        num_examples = len(self.data["train_labels"])
        self.permute = jax.jit(jax.vmap(lambda key: shuffled_epoch(key, num_examples)))
        self.keys = jax.random.split(jax.random.key(0), num_models)
        compile_seconds, _ = timed(self.run)  # first call: trace, compile and run
        warm_up, _ = timed(self.run)
        return {"compile_seconds": compile_seconds, "warm_up_seconds": warm_up}

    def _states(self):
        params = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.num_models, *x.shape)) + 0,
                              _jax_params(self.model))
        return params, jax.vmap(self.optimizer.init)(params)

    def _window(self, first_step: int, cache: dict):
        window = epoch_window(first_step, self.steps_per_call, self.batch_size, len(self.data["train_labels"]))
        epoch = window.first_epoch
        if epoch not in cache:
            perms = [self.permute(jax.vmap(lambda k, e=e: jax.random.fold_in(k, e))(self.keys))
                     for e in range(epoch, epoch + window.num_epochs)]
            cache.clear()
            cache[epoch] = jnp.concatenate(perms, axis=1)
        return cache[epoch], window.offset

    def run(self, trace: StepTrace | None = None) -> dict:
        params, opt_state = self._states()
        jax.block_until_ready(params)
        cache = {}
        if trace is not None:
            trace.plan(chunks(self.num_steps, self.steps_per_call), 0, self.num_steps)
        start = time.perf_counter()
        for first_step in range(0, self.num_steps, self.steps_per_call):
            orders, offset = self._window(first_step, cache)
            if trace is not None:
                trace.before(first_step, (params, opt_state))
            params, opt_state, losses = self.chunk(params, opt_state, self.images_uint8, self.labels,
                                                   orders, offset)
            if trace is not None:
                trace.after(first_step, (params, opt_state, losses))
        losses = jax.block_until_ready(losses)
        return {"seconds": time.perf_counter() - start, "loss": float(losses[:, -1].mean()),
                "num_models": self.num_models}


class JaxlinSweep(_JaxContender):
    """`jaxlin sweep`'s compiled loop (`jaxlin.training.sweep.SweepTrainer`): M linear models with their own
    learning rates sharing one batch order, so each step is one wide matmul."""

    def setup(self, model: str, batch_size: int, num_steps: int, num_models: int = 8,
              steps_per_call: int = 1000) -> dict:
        self._linear_only(model)
        from jaxlin.config import Config
        from jaxlin.data.datasets import Datasets, Split
        from jaxlin.runtime.devices import resolve_placement
        from jaxlin.training.sweep import Grid, SweepTrainer

        self.num_steps, self.num_models = num_steps, num_models
        self.steps_per_call = min(steps_per_call, num_steps)
        config = Config(model=model, hidden_sizes=HIDDEN_SIZES, batch_size=batch_size, num_steps=num_steps,
                        steps_per_call=self.steps_per_call, optimizer=self.optimizer_choice[0] or "sgd")
        rates = tuple(float(r) for r in np.geomspace(0.01, 1.0, num_models)) if num_models > 1 else (0.5,)
        members = Grid(learning_rates=rates).members(config)
        empty = Split(np.zeros((0, 784), np.uint8), np.zeros(0, np.int32))
        data = Datasets(Split(self.data["train_uint8"], self.data["train_labels"]), empty,
                        Split(self.data["test_uint8"], self.data["test_labels"]), "mnist", "bench")
        self.trainer = SweepTrainer(config, members, data, self._model(model), resolve_placement())
        compile_seconds, _ = timed(self.run)  # the first call compiles
        warm_up, _ = timed(self.run)
        return {"compile_seconds": compile_seconds, "warm_up_seconds": warm_up}

    def run(self, trace: StepTrace | None = None) -> dict:
        state = self.trainer.init_state()
        jax.block_until_ready(state.params)
        if trace is not None:
            trace.plan(chunks(self.num_steps, self.steps_per_call), 0, self.num_steps)
        start = time.perf_counter()
        while state.step < self.num_steps:
            first_step = state.step
            if trace is not None:
                trace.before(first_step, state.params)
            state, losses = self.trainer.run_chunk(state, min(self.steps_per_call, self.num_steps - state.step))
            if trace is not None:
                trace.after(first_step, (state.params, losses))
        losses = jax.block_until_ready(losses)
        return {"seconds": time.perf_counter() - start, "loss": float(np.mean(np.asarray(losses)[-1])),
                "num_models": self.num_models}
