"""Evaluation and checkpoint steps, and the chunks between them, generated lazily."""

import itertools
import tracemalloc

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
