"""The schedules that decide when the kernel asks a host again: the back-off between attempts
to reconnect (`Reconnect`) and the time between two polls of a host session (`after_failure`,
`next_poll`). Pure logic, checked with a clock of our own: no waiting, no host."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from remote_magic.client.session import (
    FAST_POLL,
    MAX_BACKOFF,
    QUEUED_POLL,
    SLOW_POLL,
    VIEW_POLL,
    Watch,
    after_failure,
    next_poll,
)
from remote_magic.client.transport.ssh import RECONNECT_FIRST, RECONNECT_MAX, Reconnect
from remote_magic.errors import TransportError
from remote_magic.wire.states import State


class Clock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def in_thread(call: Callable[[], None]) -> BaseException | None:
    """What `call` raises when run from a thread other than the main one (None if nothing)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            raised.append(exc)

    thread = threading.Thread(target=run, name="remote-session-test")
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    return raised[0] if raised else None


# -- Reconnect: the back-off between attempts to connect ---------------------------------------

def test_no_failure_means_no_wait() -> None:
    clock = Clock()
    reconnect = Reconnect(1.0, 8.0, clock=clock)
    assert reconnect.delay() == 0.0
    clock.advance(-500)  # whatever the clock says, nothing failed: nothing to wait for
    assert reconnect.delay() == 0.0


def test_each_failure_doubles_the_wait_up_to_the_cap() -> None:
    clock = Clock()
    reconnect = Reconnect(0.5, 5.0, clock=clock)
    waits = []
    for _ in range(7):
        reconnect.failed(TransportError("refused"))
        waits.append(reconnect.delay())
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert reconnect.failures == 7


def test_an_ssh_host_waits_half_a_second_then_doubles_up_to_half_a_minute() -> None:
    clock = Clock()
    reconnect = Reconnect(clock=clock)  # the schedule SSHTransport uses
    waits = []
    for _ in range(9):
        reconnect.failed(TransportError("refused"))
        waits.append(reconnect.delay())
    assert waits == [RECONNECT_FIRST * 2 ** n for n in range(6)] + [RECONNECT_MAX] * 3
    assert (RECONNECT_FIRST, RECONNECT_MAX) == (0.5, 30.0)


def test_the_wait_counts_down_with_the_clock_and_ends_at_zero() -> None:
    clock = Clock()
    reconnect = Reconnect(2.0, 30.0, clock=clock)
    reconnect.failed(OSError("no route to host"))
    reconnect.failed(OSError("no route to host"))  # the second failure: 4 s from now
    assert reconnect.delay() == 4.0
    clock.advance(1.5)
    assert reconnect.delay() == pytest.approx(2.5)
    clock.advance(2.5)
    assert reconnect.delay() == 0.0
    clock.advance(100)  # long past: still 0, never negative
    assert reconnect.delay() == 0.0


def test_a_failure_waits_from_when_it_happened() -> None:
    """The wait starts at the failed attempt, not at the first failure of the series."""
    clock = Clock()
    reconnect = Reconnect(1.0, 30.0, clock=clock)
    reconnect.failed(OSError("down"))
    clock.advance(10)  # the first wait is long over when the next attempt fails
    reconnect.failed(OSError("down"))
    assert reconnect.delay() == 2.0


def test_a_success_forgets_every_failure() -> None:
    clock = Clock()
    reconnect = Reconnect(1.0, 30.0, clock=clock)
    for _ in range(4):
        reconnect.failed(TransportError("timed out"))
    assert reconnect.delay() == 8.0
    reconnect.succeeded()
    assert (reconnect.delay(), reconnect.failures, reconnect.error) == (0.0, 0, "")
    assert in_thread(lambda: reconnect.check("hpc")) is None
    # a connection that drops later starts the schedule again from the first wait
    reconnect.failed(TransportError("reset"))
    assert reconnect.delay() == 1.0


def test_a_background_thread_is_refused_while_the_wait_runs() -> None:
    clock = Clock()
    reconnect = Reconnect(1.0, 30.0, clock=clock)
    reconnect.failed(TransportError("Connection refused"))
    error = in_thread(lambda: reconnect.check("cluster7"))
    assert isinstance(error, TransportError)
    message = str(error)
    assert message.startswith("cluster7 is unreachable (Connection refused)")
    assert "the last attempt to connect failed" in message
    assert "the next one is in 1.0 s" in message


def test_the_refusal_counts_the_attempts_and_the_seconds_left() -> None:
    clock = Clock()
    reconnect = Reconnect(1.0, 30.0, clock=clock)
    for _ in range(3):
        reconnect.failed(TransportError("Network is unreachable"))
    clock.advance(1.3)
    error = in_thread(lambda: reconnect.check("gpu-box"))
    assert isinstance(error, TransportError)
    message = str(error)
    assert "gpu-box is unreachable (Network is unreachable)" in message
    assert "the last 3 attempts in a row to connect failed" in message
    assert "the next one is in 2.7 s" in message  # a 4 s wait, 1.3 s of it gone


def test_the_main_thread_always_tries_at_once() -> None:
    """A request from the main thread is something the user just ran: never held back."""
    assert threading.current_thread() is threading.main_thread()
    clock = Clock()
    reconnect = Reconnect(1.0, 30.0, clock=clock)
    for _ in range(5):
        reconnect.failed(TransportError("refused"))
    assert reconnect.delay() == 16.0
    reconnect.check("cluster7")  # does not raise


def test_a_background_thread_may_try_once_the_wait_is_over() -> None:
    clock = Clock()
    reconnect = Reconnect(1.0, 30.0, clock=clock)
    reconnect.failed(TransportError("refused"))
    reconnect.failed(TransportError("refused"))
    clock.advance(1.75)  # 0.25 s to go
    assert isinstance(in_thread(lambda: reconnect.check("h")), TransportError)
    clock.advance(0.25)
    assert in_thread(lambda: reconnect.check("h")) is None


def test_the_last_error_is_the_one_reported() -> None:
    clock = Clock()
    reconnect = Reconnect(1.0, 30.0, clock=clock)
    reconnect.failed(TransportError("Name or service not known"))
    reconnect.failed(TransportError("Connection timed out"))
    error = in_thread(lambda: reconnect.check("h"))
    assert "(Connection timed out)" in str(error)
    assert "Name or service" not in str(error)


def test_the_wait_stays_at_the_cap_however_long_the_host_is_down() -> None:
    clock = Clock()
    reconnect = Reconnect(0.5, 30.0, clock=clock)
    for _ in range(1100):
        reconnect.failed(TransportError("refused"))
        clock.advance(reconnect.delay())
    reconnect.failed(TransportError("refused"))
    assert reconnect.delay() == 30.0


# -- after_failure: the next poll after one that could not reach the host ----------------------

@pytest.mark.parametrize("previous, due, expected", [
    (FAST_POLL, 4.0, 4.01),  # the transport's next attempt decides: just after it is due
    (20.0, 0.5, 0.51),  # even when that is sooner than the session's own back-off
    (FAST_POLL, 0.0, 2 * FAST_POLL),  # not backing off (this machine): the session doubles
    (1.5, 0.0, 3.0),
    (20.0, 0.0, MAX_BACKOFF),  # up to MAX_BACKOFF
    (MAX_BACKOFF, 0.0, MAX_BACKOFF),
])
def test_after_a_failed_poll(previous: float, due: float, expected: float) -> None:
    assert after_failure(previous, due) == pytest.approx(expected)


def test_failed_polls_without_a_transport_schedule_back_off_to_the_maximum() -> None:
    waits = [FAST_POLL]
    for _ in range(12):
        waits.append(after_failure(waits[-1], 0.0))
    assert waits[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert max(waits) == MAX_BACKOFF and waits[-1] == MAX_BACKOFF
    assert all(a <= b for a, b in zip(waits, waits[1:]))


# -- next_poll: the next poll after one that worked --------------------------------------------

def watch(state: str = State.RUNNING, live: bool = False, listening: bool = False) -> Watch:
    w = Watch("0123456789abcdef", live_output=live, state=state)
    if listening:
        w.listeners.append(lambda update: None)
    return w


QUEUED = [State.PREPARED, State.SUBMITTED, State.QUEUED]


@pytest.mark.parametrize("previous, watches, batch, expected", [
    # a batch host whose watched tasks all wait in the queue: slow down by half each time
    (FAST_POLL, [watch(State.QUEUED)], True, FAST_POLL * 1.5),
    (2.0, [watch(s) for s in QUEUED], True, 3.0),
    (4.0, [watch(State.QUEUED)], True, QUEUED_POLL),
    (QUEUED_POLL, [watch(State.QUEUED)], True, QUEUED_POLL),
    # ... whoever watches them: a cell waiting for a queued job does not poll it fast
    (FAST_POLL, [watch(State.QUEUED, live=True)], True, FAST_POLL * 1.5),
    (2.0, [watch(State.SUBMITTED, listening=True)], True, 3.0),
    # the states as plain words (read from a file) count the same as State members
    (2.0, [watch("queued"), watch("submitted")], True, 3.0),
    # one task running on the batch host: the queue rule no longer holds
    (QUEUED_POLL, [watch(State.QUEUED), watch(State.RUNNING, live=True)], True, FAST_POLL),
    (QUEUED_POLL, [watch(State.RUNNING)], True, SLOW_POLL),
    # waiting tasks on a host that runs processes: the queue rule is for batch hosts only
    (FAST_POLL, [watch(State.SUBMITTED, live=True)], False, FAST_POLL),
    (1.0, [watch(State.SUBMITTED)], False, 1.5),
    # a cell streams the output of one of them: fast
    (SLOW_POLL, [watch(), watch(live=True)], False, FAST_POLL),
    (SLOW_POLL, [watch(live=True, listening=True)], False, FAST_POLL),
    # a live view only: every VIEW_POLL
    (SLOW_POLL, [watch(), watch(listening=True)], False, VIEW_POLL),
    (FAST_POLL, [watch(listening=True)], False, VIEW_POLL),
    # nobody looks: grow by half up to SLOW_POLL
    (FAST_POLL, [watch()], False, FAST_POLL * 1.5),
    (1.0, [watch(), watch()], False, 1.5),
    (1.5, [watch()], False, SLOW_POLL),
    (SLOW_POLL, [watch()], False, SLOW_POLL),
    # coming down from a long queue wait with nobody looking: at most SLOW_POLL at once
    (QUEUED_POLL, [watch()], False, SLOW_POLL),
])
def test_next_poll(previous: float, watches: list[Watch], batch: bool, expected: float) -> None:
    assert next_poll(previous, watches, batch=batch) == pytest.approx(expected)


def test_next_poll_takes_any_iterable_of_watches() -> None:
    """The session passes `dict.values()`: a view, read more than once by the rules."""
    watches = {"a": watch(State.RUNNING), "b": watch(listening=True)}
    assert next_poll(SLOW_POLL, watches.values(), batch=True) == VIEW_POLL
    assert next_poll(SLOW_POLL, iter(watches.values()), batch=True) == VIEW_POLL


def test_queued_polls_slow_down_step_by_step_to_the_queue_rate() -> None:
    """A job that starts at once on a quiet cluster is seen at once; one that waits costs the
    login node one poll every QUEUED_POLL seconds at most."""
    queued = [watch(State.QUEUED, live=True), watch(State.SUBMITTED)]
    waits = [FAST_POLL]
    for _ in range(30):
        waits.append(next_poll(waits[-1], queued, batch=True))
    assert waits[1:4] == pytest.approx([0.15, 0.225, 0.3375])
    assert all(a < b for a, b in zip(waits, waits[1:]) if b < QUEUED_POLL)
    assert max(waits) == QUEUED_POLL
    first = waits.index(QUEUED_POLL)
    assert 5 < first < 15 and set(waits[first:]) == {QUEUED_POLL}
    # the job starts: the cell waiting for it streams its output at once
    queued[0].state = State.RUNNING
    assert next_poll(waits[-1], queued, batch=True) == FAST_POLL


def test_quiet_polls_grow_to_the_slow_rate() -> None:
    waits = [FAST_POLL]
    for _ in range(20):
        waits.append(next_poll(waits[-1], [watch()], batch=False))
    assert max(waits) == SLOW_POLL and waits[-1] == SLOW_POLL
    assert all(a <= b for a, b in zip(waits, waits[1:]))
