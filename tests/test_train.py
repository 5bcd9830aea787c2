"""Training: the sampler, both loops, determinism, divergence, optimizers."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlin.config import Config, ConfigError
from jaxlin.models import get_model
from jaxlin.training.trainer import (DivergenceError, cross_entropy_loss, fit, make_fused_train, make_optimizer,
                          make_train_step)

TINY = Config(num_steps=60, eval_every=20, batch_size=32)


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 7)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_probs[np.arange(7), labels].mean()
    assert float(cross_entropy_loss(logits, labels)) == pytest.approx(expected, rel=1e-5)


def _batches(data, num_steps, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(len(data.train), batch_size, replace=False) for _ in range(num_steps)])


@pytest.mark.parametrize("model_name, optimizer", [("linear", "sgd"), ("mlp", "adam")])
def test_per_step_and_fused_paths_agree(tiny_data, model_name, optimizer):
    model = get_model(model_name, hidden_sizes=(16,))
    opt = make_optimizer(Config(optimizer=optimizer, learning_rate=0.5 if optimizer == "sgd" else 1e-3))
    indices = _batches(tiny_data, 25, 32)
    params = model.init(jax.random.key(0))
    fused = make_fused_train(model.apply, opt)
    order = jnp.asarray(np.concatenate([[0, 0, 0], indices.ravel()]), jnp.int32)
    fused_params, _, fused_losses = fused(params, opt.init(params), jnp.asarray(tiny_data.train.images_uint8),
                                          jnp.asarray(tiny_data.train.labels), order, 3,
                                          batch_size=32, num_steps=len(indices))
    step = make_train_step(model.apply, opt)
    params = model.init(jax.random.key(0))
    state, losses = (params, opt.init(params)), []
    for batch in indices:
        *state, loss = step(*state, tiny_data.train.images[batch], tiny_data.train.labels[batch])
        losses.append(loss)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), fused_params, state[0])
    np.testing.assert_allclose(fused_losses, np.stack(losses), rtol=2e-5)


def test_fit_loops_agree(tiny_data):
    model = get_model("linear")
    fused = fit(TINY, tiny_data, model, progress=False)
    per_step = fit(TINY.replace(loop="per-step"), tiny_data, model, progress=False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                 fused.params, per_step.params)
    assert [e["step"] for e in fused.evaluations] == [0, 20, 40, 60]


def test_same_seed_same_params_bit_for_bit(tiny_data):
    model = get_model("mlp", hidden_sizes=(16,))
    config = TINY.replace(model="mlp", optimizer="adam", learning_rate=1e-3, steps_per_call=7)
    first, second = (fit(config, tiny_data, model, progress=False) for _ in range(2))
    jax.tree.map(np.testing.assert_array_equal, first.params, second.params)
    assert _without_times(first.evaluations) == _without_times(second.evaluations)
    other = fit(config.replace(seed=1), tiny_data, model, progress=False)
    assert not np.array_equal(other.params[0]["w"], first.params[0]["w"])


def test_chunk_size_does_not_change_the_result(tiny_data):
    model = get_model("linear")
    one_call = fit(TINY.replace(eval_every=60), tiny_data, model, progress=False)
    many_calls = fit(TINY.replace(eval_every=60, steps_per_call=7), tiny_data, model, progress=False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                 one_call.params, many_calls.params)


def test_training_learns(tiny_data):
    result = fit(TINY, tiny_data, get_model("linear"), progress=False)
    assert result.evaluations[0]["test_accuracy"] < 0.2
    assert result.evaluations[-1]["test_accuracy"] > 0.9
    assert result.timings["train_seconds"] > 0 and result.timings["compile_seconds"] > 0


@pytest.mark.parametrize("optimizer, learning_rate", [("momentum", 0.05), ("adam", 0.01)])
def test_other_optimizers_learn(tiny_data, optimizer, learning_rate):
    config = TINY.replace(optimizer=optimizer, learning_rate=learning_rate)
    result = fit(config, tiny_data, get_model("linear"), progress=False)
    assert result.evaluations[-1]["test_accuracy"] > 0.9


def test_make_optimizer_rejects_unknown_names():
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        make_optimizer(Config(optimizer="rmsprop"))
    assert isinstance(make_optimizer(Config()), optax.GradientTransformation)


@pytest.mark.parametrize("loop", ["fused", "per-step"])
def test_divergence_is_reported_with_its_step(tiny_data, loop):
    config = TINY.replace(learning_rate=1e38, loop=loop)  # logits overflow float32
    with pytest.raises(DivergenceError, match=r"diverged at step \d+: loss is (nan|inf)") as info:
        fit(config, tiny_data, get_model("linear"), progress=False)
    assert 1 <= info.value.step <= config.num_steps


def test_zero_steps_evaluates_only_the_initial_model(tiny_data):
    result = fit(TINY.replace(num_steps=0), tiny_data, get_model("linear"), progress=False)
    assert [e["step"] for e in result.evaluations] == [0]


@pytest.mark.parametrize("changes, message", [
    ({"learning_rate": 0.0}, "learning rate must be a finite number > 0"),
    ({"learning_rate": -1.0}, "learning rate"),
    ({"learning_rate": float("nan")}, "learning rate"),
    ({"learning_rate": float("inf")}, "learning rate"),
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"batch_size": 601}, "batch size 601 is larger than the training set"),
    ({"num_steps": -1}, "number of steps must be >= 0"),
    ({"eval_every": 0}, "eval every must be at least 1"),
    ({"model": "mlp", "hidden_sizes": (0,)}, "hidden sizes must be at least 1"),
    ({"optimizer": "lbfgs"}, "unknown optimizer"),
])
def test_fit_rejects_bad_settings(tiny_data, changes, message):
    with pytest.raises(ConfigError, match=message):
        fit(TINY.replace(**changes), tiny_data, get_model("linear"), progress=False)


def _without_times(records):
    return [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in records]


def test_train_loss_is_the_mean_since_the_previous_evaluation_whatever_the_chunk_size(tiny_data):
    model = get_model("linear")
    small, large = (fit(TINY.replace(steps_per_call=n), tiny_data, model, progress=False) for n in (7, 1000))
    assert [r["step"] for r in small.evaluations] == [0, 20, 40, 60]
    assert small.evaluations[0]["train_loss"] is None
    for a, b in zip(small.evaluations[1:], large.evaluations[1:]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    # The mean over 20 steps is not the mean of the last chunk of 7.
    per_step = fit(TINY.replace(loop="per-step", eval_every=1, num_steps=20), tiny_data, model, progress=False)
    losses = [r["train_loss"] for r in per_step.evaluations[1:]]
    assert small.evaluations[1]["train_loss"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_evaluations_are_labelled_by_their_steps(tiny_data):
    model = get_model("linear")
    result = fit(TINY, tiny_data, model, eval_steps=[5, 60], progress=False)
    assert [r["step"] for r in result.evaluations] == [5, 60]
    assert result.evaluations[0]["train_loss"] is not None
    none = fit(TINY, tiny_data, model, eval_steps=[], progress=False)
    assert none.evaluations == [] and none.final["accuracy"] > 0.9
    assert none.final["num_examples"] == 1003 and np.sum(none.final["confusion_matrix"]) == 1003


def test_the_fused_chunk_refuses_an_order_shorter_than_its_steps(tiny_data):
    model = get_model("linear")
    opt = make_optimizer(TINY)
    params = model.init(jax.random.key(0))
    three_batches = jnp.arange(3 * 32, dtype=jnp.int32)
    with pytest.raises(ValueError, match="batch order of 96 indices is too short for 6 steps of 32"):
        make_fused_train(model.apply, opt)(params, opt.init(params), jnp.asarray(tiny_data.train.images_uint8),
                                           jnp.asarray(tiny_data.train.labels), three_batches, 0,
                                           batch_size=32, num_steps=6)


@pytest.mark.parametrize("changes, message", [
    ({"seed": -1}, r"seed must be in \[0, 2\*\*63\), got -1"),
    ({"seed": 2**63}, r"seed must be in \[0, 2\*\*63\)"),
    ({"unroll": 65}, "unroll must be at most 64"),
    ({"model": "mlp", "hidden_sizes": (999_999_999,)},
     r"hidden sizes \[999999999\] make 794,999,999,215 params; at most 268,435,456"),
    ({"checkpoint_every": -1}, "checkpoint every must be >= 0"),
])
def test_config_refuses_settings_that_cannot_run(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config().replace(**changes).validate()


def test_a_stop_that_comes_during_an_evaluation_still_saves_the_state_it_stops_at(tiny_data):
    """The stop request lands after the chunk's save check (here: while step 20's record is written, and
    checkpoints are only every 1,000 steps). The chunk after step 20 was dispatched before the host read
    that evaluation (the device does not wait for the host), so the run stops at its end, step 40, and
    saves that state before it ends."""
    from jaxlin.training.loop import LoopHooks

    class StopDuringEvaluation(LoopHooks):
        checkpoints = True

        def __init__(self):
            self.saved, self.stop = [], False

        def on_evaluation(self, record):
            self.stop = self.stop or record["step"] == 20

        def save(self, state, progress, wait=False):
            self.saved.append((state.step, progress.loss_count))

        def should_stop(self):
            return self.stop

    hooks = StopDuringEvaluation()
    result = fit(TINY.replace(checkpoint_every=1000), tiny_data, get_model("linear"), progress=False, hooks=hooks)
    assert result.stopped and result.state.step == 40
    assert hooks.saved == [(0, 0), (40, 20)]  # the evaluation at 20 closed its loss window


def test_fit_takes_any_optax_optimizer(tiny_data):
    """From Python, an optax transformation of the user's (here a schedule with clipping) trains
    instead of the config's, and the result says so."""
    import optax

    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.5, warmup_steps=5, decay_steps=30)
    mine = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(schedule))
    config = TINY.replace(num_steps=30, eval_every=10)
    custom = fit(config, tiny_data, get_model("linear"), progress=False, optimizer=mine)
    plain = fit(config, tiny_data, get_model("linear"), progress=False)
    assert custom.optimizer == "a custom optax transformation" and plain.optimizer == "sgd(learning_rate=0.5)"
    assert custom.final["accuracy"] > 0.5
    assert not np.array_equal(custom.params[0]["w"], plain.params[0]["w"])


class _SavingHooks:
    """LoopHooks that keep every save's step and record, and take a little host time per record (so
    that a timed checkpoint of 1 ms is due at every boundary)."""

    def __new__(cls, pause: float = 0.0):
        from jaxlin.training.loop import LoopHooks

        class Hooks(LoopHooks):
            checkpoints = True

            def __init__(self):
                self.saved, self.records = [], []

            def on_evaluation(self, record):
                self.records.append(record)
                time.sleep(pause)

            def save(self, state, progress, wait=False):
                leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]  # readable: not donated
                self.saved.append((state.step, progress.loss_count, leaves))

        return Hooks()


def test_checkpoints_by_time_are_taken_at_boundaries_and_hold_their_step(tiny_data):
    """`checkpoint_every` as a duration: a save at the first chunk boundary after the interval (here 1 ms,
    with 2 ms of host work per boundary: every boundary), each holding its own step's params; an hour:
    only the first state and the last."""
    config = TINY.replace(eval_every=10, steps_per_call=10, checkpoint_every="0.001s")
    often = _SavingHooks(pause=0.002)
    result = fit(config, tiny_data, get_model("linear"), progress=False, hooks=often)
    assert [step for step, _, _ in often.saved] == list(range(0, 61, 10))
    assert [count for _, count, _ in often.saved] == [0] + [10] * 6  # saved before each step's record
    straight = fit(config.replace(num_steps=30, checkpoint_every=0), tiny_data, get_model("linear"), progress=False)
    for saved, final in zip(often.saved[3][2], jax.tree.leaves(straight.params)):
        np.testing.assert_array_equal(saved, final)  # step 30's checkpoint is step 30's state, bit for bit
    for saved, final in zip(often.saved[-1][2], jax.tree.leaves(result.params)):
        np.testing.assert_array_equal(saved, final)
    rarely = _SavingHooks()
    fit(config.replace(checkpoint_every="1h"), tiny_data, get_model("linear"), progress=False, hooks=rarely)
    assert [step for step, _, _ in rarely.saved] == [0, 60]


@pytest.mark.parametrize("model, steps_per_call", [("linear", 1000), ("linear", 7), ("mlp", 13)])
def test_records_are_those_of_one_step_after_another_whatever_the_overlap(tiny_data, model, steps_per_call):
    """The loop dispatches each evaluation and the next chunk before it reads the last chunk's losses and
    the evaluation: its records are the numbers of the plain sequence (train a chunk, read its losses,
    evaluate), step for step."""
    from jaxlin.runtime.devices import resolve_placement, to_host
    from jaxlin.training.trainer import Trainer

    config = TINY.replace(model=model, hidden_sizes=(16,), eval_every=10, steps_per_call=steps_per_call)
    hooks = _SavingHooks()
    fit(config.replace(checkpoint_every="0.001s"), tiny_data, get_model(model, (16,)), progress=False,
        hooks=hooks)
    trainer = Trainer(config, tiny_data, get_model(model, (16,)), resolve_placement())
    state, expected = trainer.init_state(), []
    expected.append({"step": 0, **trainer.evaluate(state), "train_loss": None})
    while state.step < config.num_steps:
        state, losses = trainer.run_chunk(state, 10)
        losses = to_host(losses)
        expected.append({"step": state.step, **trainer.evaluate(state),
                         "train_loss": float(np.sum(losses, dtype=np.float64)) / len(losses)})
    assert [{k: r[k] for k in expected[0]} for r in hooks.records] == expected


def test_the_progress_bar_counts_each_step_once(tiny_data, monkeypatch):
    """The bar is made after the first chunk is dispatched; it must start from the run's first step, not from
    where the state has moved on to by then (it showed 300 of 200 steps)."""
    import tqdm.auto

    bars = []

    class RecordingBar:
        def __init__(self, total=None, initial=0, **kwargs):
            self.total, self.n = total, initial
            bars.append(self)

        def update(self, steps):
            self.n += steps

        def set_postfix(self, *args, **kwargs):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    fit(Config(num_steps=30, eval_every=10, steps_per_call=10), tiny_data, get_model("linear"), progress=True)
    assert [(bar.total, bar.n) for bar in bars] == [(30, 30)]
