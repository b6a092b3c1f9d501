"""A task's states: one definition, ordered, with the final ones marked, equal to their words."""

from __future__ import annotations

import json

from remote_magic.wire.states import FINAL_STATES, STATES, WAITING_STATES, State


def test_states_are_their_words_wherever_they_go() -> None:
    """States travel as plain words (state.json, the store, agent answers): a member must be
    written as its word and a word read back must equal its member."""
    assert json.dumps({"state": State.TIMED_OUT}) == '{"state": "timed_out"}'
    assert f"{State.RUNNING}" == str(State.RUNNING) == "running"
    assert "running" in {State.RUNNING} and State.RUNNING in {"running"}
    assert {"running": 1}[State.RUNNING] == 1
    assert State("lost") is State.LOST


def test_order_and_final_flag() -> None:
    assert STATES == ("prepared", "submitted", "queued", "running", "completed", "failed",
                      "cancelled", "timed_out", "lost")
    assert [s.order for s in State][:5] == [0, 1, 2, 3, 4]
    assert {s.order for s in State if s.final} == {4}
    assert FINAL_STATES == {"completed", "failed", "cancelled", "timed_out", "lost"}
    assert WAITING_STATES == ("prepared", "submitted", "queued")
    assert not State.RUNNING.final and State.CANCELLED.final
