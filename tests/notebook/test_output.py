"""A task's printed text and its displays are put back together in the order they happened."""

from __future__ import annotations

import pickle
from typing import Any

from remote_magic.client.session import Update
from remote_magic.notebook.output import OutputStream


class Cell:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.stream = OutputStream(self.write, self.show)

    def write(self, name: str, text: str) -> None:
        self.seen.append((name, text))

    def show(self, entry: dict[str, Any]) -> None:
        if entry["kind"] == "clear":
            self.seen.append(("clear", entry["wait"]))
        else:
            self.seen.append(("display", entry.get("object", entry.get("data"))))

    def joined(self) -> list[tuple[str, Any]]:
        """Adjacent text of one stream as one piece, as a front end shows it."""
        out: list[tuple[str, Any]] = []
        for kind, value in self.seen:
            if out and kind in ("stdout", "stderr") and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1] + value)
            else:
                out.append((kind, value))
        return out


def display(n: int, out: int, err: int = 0, value: str = "x", **extra: Any) -> dict[str, Any]:
    return {"n": n, "out": out, "err": err, "kind": "bundle", "data": {"text/plain": value},
            **extra}


def update(stdout: str = "", at: int = 0, events: list[dict[str, Any]] | None = None,
           **extra: Any) -> Update:
    return Update("t", "running", stdout=stdout, stdout_at=at, events=events or [], **extra)


def test_a_display_lands_between_the_lines_around_it() -> None:
    cell = Cell()
    cell.stream.feed(update("a\nb\n", 0, [display(0, out=2, value="x")]))
    assert cell.joined() == [("stdout", "a\n"), ("display", {"text/plain": "x"}),
                             ("stdout", "b\n")]


def test_text_arriving_in_pieces_across_polls() -> None:
    cell = Cell()
    cell.stream.feed(update("a\n", 0))
    cell.stream.feed(update("b\nc\n", 2, [display(0, out=4)]))
    cell.stream.feed(update("", 6))
    assert cell.joined() == [("stdout", "a\nb\n"), ("display", {"text/plain": "x"}),
                             ("stdout", "c\n")]


def test_text_waits_while_more_displays_are_pending() -> None:
    cell = Cell()
    cell.stream.feed(update("a\nb\n", 0, [display(0, out=0)], events_more=True))
    assert cell.joined() == [("display", {"text/plain": "x"})]  # "a" may follow a display
    cell.stream.feed(update("", 4, [display(1, out=2, value="y")]))
    assert cell.joined() == [("display", {"text/plain": "x"}), ("stdout", "a\n"),
                             ("display", {"text/plain": "y"}), ("stdout", "b\n")]


def test_clear_output_and_a_large_display_that_comes_at_the_end() -> None:
    cell = Cell()
    clear = {"n": 1, "out": 2, "err": 0, "kind": "clear", "wait": True}
    cell.stream.feed(update("a\nb\nc\n", 0, [display(0, out=2, deferred=True), clear]))
    assert cell.joined() == [("stdout", "a\n")]  # everything after the large one waits
    entries = [display(0, out=2, value="big"), clear]
    cell.stream.finish(entries)
    assert cell.joined() == [("stdout", "a\n"), ("display", {"text/plain": "big"}),
                             ("clear", True), ("stdout", "b\nc\n")]


def test_replay_of_a_finished_task_and_figures_held_for_after_the_value() -> None:
    cell = Cell()
    pickled = {"n": 0, "out": 0, "err": 0, "kind": "object", "data": pickle.dumps([1, 2])}
    figure = display(1, out=3, value="<Figure>", at_end=True)
    cell.stream.add("hi\n", 0, "warn\n", 0, [])
    cell.stream.finish([pickled, figure])
    assert cell.joined() == [("display", [1, 2]), ("stdout", "hi\n"), ("stderr", "warn\n")]
    cell.stream.show_held()
    assert cell.seen[-1] == ("display", {"text/plain": "<Figure>"})


def test_output_delivered_twice_is_written_once() -> None:
    cell = Cell()
    cell.stream.feed(update("abc", 0))
    cell.stream.add("abcdef", 0, "", 0, [])
    cell.stream.drain()
    assert cell.joined() == [("stdout", "abcdef")]


def test_a_line_cut_by_a_full_reply_waits_for_its_end() -> None:
    """A reply carries at most so much output (output_more: the rest is on its way): the line
    it cut in two is written whole with the next one, so that nothing printed meanwhile (a
    status line) lands in its middle. Text that simply has no line break yet (a progress of
    dots) is written at once."""
    cell = Cell()
    cell.stream.feed(update("line 1\nline 2 fir", 0, output_more=True))
    assert cell.seen == [("stdout", "line 1\n")]
    cell.write("stdout", "task t on hpc: running\n")  # the view's status line
    cell.stream.feed(update("st half\nline 3\n...", 17))
    assert cell.joined() == [("stdout", "line 1\ntask t on hpc: running\n"
                                        "line 2 first half\nline 3\n...")]


def test_a_cut_reply_without_a_line_break_holds_it_all_until_the_end() -> None:
    cell = Cell()
    cell.stream.feed(update("no line break", 0, output_more=True))
    assert cell.seen == []
    cell.stream.finish([])
    assert cell.joined() == [("stdout", "no line break")]
