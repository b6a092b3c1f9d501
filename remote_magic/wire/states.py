"""A task's states: one definition, in the order a task goes through them, saying which are final.

Both sides write and read states as plain words (in state.json, in the store, in agent
answers); `State` members are those words (a `str` subclass), so a state read from a file
compares equal to its member and a member is written as its word.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    PREPARED = "prepared"  # its files are written: here, or staged on the host
    SUBMITTED = "submitted"  # started as a process, or handed to the host's scheduler
    QUEUED = "queued"  # the scheduler holds it in its queue
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"  # its processes or its node are gone and left no outcome

    # the word itself wherever a state is shown, formatted, hashed or written
    __str__ = str.__str__
    __format__ = str.__format__
    __hash__ = str.__hash__

    @property
    def order(self) -> int:
        """Where the state comes in a task's life (ends share the last places)."""
        return _ORDER[self]

    @property
    def final(self) -> bool:
        """A task in this state never changes again."""
        return self.order >= _ORDER[State.COMPLETED]


_ORDER = {state: min(index, 4) for index, state in enumerate(State)}
STATES = tuple(state.value for state in State)
FINAL_STATES = frozenset(state.value for state in State if state.final)
# the states of a task that has not started running yet
WAITING_STATES = tuple(state.value for state in State if state.order < _ORDER[State.RUNNING])
