"""Evaluation and checkpoint steps, and the chunks between them, generated lazily."""

import itertools
import tracemalloc

import pytest

from jaxlin.config import Config, ConfigError, auto_eval_every, checkpoint_interval, parse_checkpoint_every
from jaxlin.training.schedule import StepSchedule, checkpoint_schedule, chunks, eval_schedule


def test_chunks_end_at_evaluations():
    evals = eval_schedule(1000, 100, [0, 1, 10, 1000])
    assert list(chunks(0, 1000, 1000, evals)) == [(0, 1), (1, 9), (10, 990)]
    evals = eval_schedule(250, 100)
    assert list(chunks(0, 250, 80, evals)) == [(0, 80), (80, 20), (100, 80), (180, 20), (200, 50)]
    assert list(chunks(0, 0, 10, eval_schedule(0, 100))) == []


def test_chunks_resumed_at_any_boundary_walk_the_same_way():
    evals = eval_schedule(1000, 70)
    saves = checkpoint_schedule(1000, 45, evals)
    whole = list(chunks(0, 1000, 30, evals, saves))
    for start, _ in whole:
        assert list(chunks(start, 1000, 30, evals, saves)) == [c for c in whole if c[0] >= start]


def test_default_evaluations_and_checkpoints():
    evals = eval_schedule(250, 100)
    assert [s for s in range(-5, 300) if s in evals] == [0, 100, 200, 250]
    assert evals.next_after(0) == 100 and evals.next_after(200) == 250 and evals.next_after(250) is None
    at_evals = checkpoint_schedule(250, None, evals)
    assert [s for s in range(1, 300) if s in at_evals] == [100, 200, 250]
    every_30 = checkpoint_schedule(250, 30, evals)
    assert [s for s in range(1, 300) if s in every_30][-2:] == [240, 250]
    never = checkpoint_schedule(250, 0, evals)
    assert not any(s in never for s in range(300)) and never.next_after(0) is None


def test_explicit_evaluation_steps_and_none():
    evals = eval_schedule(100, 10, [0, 1, 10])
    assert [s for s in range(101) if s in evals] == [0, 1, 10]
    assert list(chunks(0, 100, 1000, evals)) == [(0, 1), (1, 9), (10, 90)]
    none = eval_schedule(100, 10, [])
    assert not any(s in none for s in range(101))
    assert list(chunks(0, 100, 40, none)) == [(0, 40), (40, 40), (80, 20)]


def test_a_huge_step_count_costs_nothing_up_front():
    tracemalloc.start()
    evals = eval_schedule(10**12, 100)
    saves = checkpoint_schedule(10**12, None, evals)
    first = list(itertools.islice(chunks(0, 10**12, 1000, evals, saves), 3))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert first == [(0, 100), (100, 100), (200, 100)]
    assert peak < 100_000
    assert 10**12 in evals and StepSchedule(10**12, every=100).next_after(10**12 - 1) == 10**12


def test_the_default_evaluation_interval_keeps_long_runs_to_fifty_evaluations():
    """100 steps (the tutorial's 1,000 steps: 10 evaluations, as always), then round intervals."""
    assert [auto_eval_every(n) for n in (0, 1, 1000, 5000)] == [100, 100, 100, 100]
    assert [auto_eval_every(n) for n in (5001, 10_001, 21_000, 100_000, 100_001, 10**6)] == \
        [200, 500, 500, 2000, 5000, 20_000]
    intervals = [100, 200, 500, 1000, 2000, 5000, 10_000, 20_000]
    for num_steps in range(0, 300_000, 997):  # the smallest of the round intervals that keeps it to 50
        interval = auto_eval_every(num_steps)
        assert -(-num_steps // interval) <= 50
        assert interval == 100 or -(-num_steps // intervals[intervals.index(interval) - 1]) > 50
    assert Config(num_steps=21_000).eval_interval() == 500
    assert Config(num_steps=21_000, eval_every=100).eval_interval() == 100
    assert Config(num_steps=21_000).with_eval_interval().eval_every == 500


@pytest.mark.parametrize("given, canonical, seconds, steps, never", [
    ("5m", "5m", 300.0, None, False), ("30s", "30s", 30.0, None, False), ("1.5h", "1.5h", 5400.0, None, False),
    (" 10M ", "10m", 600.0, None, False), (".5s", ".5s", 0.5, None, False), ("500", 500, None, 500, False),
    (500, 500, None, 500, False), ("0", 0, None, None, True), (0, 0, None, None, True),
])
def test_checkpoint_every_takes_a_duration_steps_or_never(given, canonical, seconds, steps, never):
    assert parse_checkpoint_every(given) == canonical
    assert Config(checkpoint_every=given).checkpoint_every == canonical  # `--checkpoint-every 500` is text
    interval = checkpoint_interval(given)
    assert (interval.seconds, interval.steps, interval.never) == (seconds, steps, never)
    assert Config().checkpoints().seconds == 300.0  # the default: every 5 minutes of wall time


@pytest.mark.parametrize("bad", ["-1", -1, "0s", "5d", "ten minutes", "1e3s", 1.5, True, "", "m", "9" * 400 + "h"])
def test_a_bad_checkpoint_interval_is_one_error_naming_it(bad):
    with pytest.raises(ConfigError, match="checkpoint every"):
        Config(checkpoint_every=bad).validate()


def test_timed_checkpoints_leave_the_chunks_as_they_are():
    """A duration schedules only the last step (the loop adds the timed ones at boundaries that are
    there anyway), so the chunks, and so the bits, do not depend on the clock."""
    evals = eval_schedule(1000, 100)
    timed = checkpoint_schedule(1000, "5m", evals)
    assert [s for s in range(1001) if s in timed] == [1000]
    assert list(chunks(0, 1000, 1000, evals, timed)) == list(chunks(0, 1000, 1000, evals))
    older = checkpoint_schedule(1000, None, evals)  # records of an older jaxlin: at every evaluation
    assert [s for s in range(1, 1001) if s in older] == list(range(100, 1001, 100))
