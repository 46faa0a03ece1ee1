"""The poll schedule: back-off with the time waited, and first polls learned per request shape."""

from __future__ import annotations

from pathlib import Path

from runner.api.polling import TrainingTimes, poll_delay
from runner.api.wire import shape as shape_of
from runner.models import Job


def test_poll_delay_backs_off_in_proportion_and_is_capped() -> None:
    """Polls wait poll_interval at first, a twentieth of the time waited later, never over 6x."""
    assert poll_delay(10, 0) == 10
    assert poll_delay(10, 600) == 30
    assert poll_delay(10, 3600) == 60
    assert poll_delay(0.05, 2.0) == 0.1


def test_first_poll_waits_for_the_shortest_training_of_the_same_shape() -> None:
    """Unknown shapes are asked about after poll_interval; a known one at 90 % of its
    shortest, then again when that shortest had ended, then on the usual back-off."""
    times = TrainingTimes()
    small = shape_of(Job(name="a", images=(Path("/x/1.png"),) * 3))
    large = shape_of(Job(name="b", images=(Path("/x/1.png"),) * 30))
    assert times.first_poll(small, 10) == 10
    times.seen(small, 600)
    times.seen(small, 500)
    times.seen(small, 700)
    assert times.first_poll(small, 10) == 450
    assert times.next_poll(small, 10, 450) == 22.5  # the back-off comes before 500
    assert times.next_poll(small, 10, 490) == 10  # the back-off (24.5) would pass 500
    assert times.next_poll(small, 10, 500) == poll_delay(10, 500)
    assert times.first_poll(large, 10) == 10
    assert times.next_poll(large, 10, 10) == poll_delay(10, 10)
    times.seen(large, 4)  # shorter than poll_interval: never ask sooner than that
    assert times.first_poll(large, 10) == 10


def test_a_faster_training_lowers_the_estimate() -> None:
    """A training seen done at the 90 % poll becomes the new shortest, so an estimate that
    started high (a first sample that waited in a queue) comes down run by run."""
    times = TrainingTimes()
    shape = shape_of(Job(name="a", images=(Path("/x/1.png"),)))
    times.seen(shape, 1200)  # the first one queued for a long time
    first = times.first_poll(shape, 10)
    times.seen(shape, first)  # the next was already done when first asked
    assert times.first_poll(shape, 10) == first * 0.9 < 1200 * 0.9


def test_shape_ignores_what_the_api_ignores() -> None:
    """Kontext ignores finetune_type, so it does not split shapes; iterations and counts do."""
    pair = (Path("/p/a.png"), Path("/p/b.png"))
    kontext = Job(name="k", option="FluxKontextFinetune", images=pair, prompt="red")
    assert shape_of(kontext) == shape_of(Job(name="k2", option="FluxKontextFinetune", finetune_type="Style", images=pair))
    assert shape_of(Job(name="a", images=pair)) != shape_of(Job(name="a", images=pair, num_iterations=2000))
    assert shape_of(Job(name="a", image_urls=("https://e/a.jpg",))) == shape_of(Job(name="b", images=pair[:1]))
