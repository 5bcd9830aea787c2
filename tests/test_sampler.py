"""The batch order: shuffled epochs on the device, windows of it, and the host's window check."""

import jax
import numpy as np
import pytest

from jaxlin.training.sampler import EpochSampler, check_window, shuffled_epoch


@pytest.mark.parametrize("num_examples, batch_size", [(50, 10), (53, 10), (7, 7), (10, 3)])
def test_sampler_draws_shuffled_epochs_without_replacement(num_examples, batch_size):
    sampler = EpochSampler(jax.random.key(0), num_examples, batch_size)
    num_steps = 3 * num_examples // batch_size + 1
    stream = np.asarray(sampler.batch_indices(0, num_steps)).ravel()
    assert stream.shape == (num_steps * batch_size,)
    epochs = [stream[i:i + num_examples] for i in range(0, 3 * num_examples, num_examples)]
    for epoch in epochs:  # every example exactly once per epoch, even across batch boundaries
        assert sorted(epoch.tolist()) == list(range(num_examples))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
    assert not np.array_equal(epochs[0], np.arange(num_examples))


def test_sampler_windows_agree_with_one_long_draw():
    sampler = EpochSampler(jax.random.key(3), 53, 10)
    whole = np.asarray(sampler.batch_indices(0, 20))
    pieces = [np.asarray(EpochSampler(jax.random.key(3), 53, 10).batch_indices(s, n))
              for s, n in ((0, 1), (1, 6), (7, 13))]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


@pytest.mark.parametrize("num_examples", [10, 53, 70_000])  # 70,000 > 2**16 takes the other path
def test_shuffled_epoch_is_a_permutation(num_examples):
    order = np.asarray(shuffled_epoch(jax.random.key(0), num_examples))
    assert order.dtype == np.int32 and sorted(order.tolist()) == list(range(num_examples))


def test_shuffled_epoch_is_close_to_uniform():
    # Where element 0 lands over 2,000 shuffles of 10: each place ~200 times.
    places = [int(np.flatnonzero(np.asarray(shuffled_epoch(jax.random.key(i), 10)) == 0)[0])
              for i in range(2000)]
    counts = np.bincount(places, minlength=10)
    chi2 = ((counts - 200) ** 2 / 200).sum()
    assert chi2 < 27.9, counts  # p = 0.001 for 9 degrees of freedom


def test_check_window_refuses_an_order_too_short():
    check_window(300, 0, 50, 6)
    check_window(300, 100, 50, 4)
    with pytest.raises(ValueError, match="batch order too short: 6 steps of 50 from offset 0 need 300 indices, "
                                         "the order holds 150"):
        check_window(150, 0, 50, 6)
    with pytest.raises(ValueError, match="offset 120"):
        check_window(300, 120, 50, 4)
