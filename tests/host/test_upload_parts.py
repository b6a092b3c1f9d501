"""A file sent in parallel streams, as the agents see it (host/fileops.py): each stream's agent
writes one range into the one temporary file, the first puts it in place once all ranges are
in, and a range that failed or never came leaves nothing behind. A range of a file is fetched
alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from remote_magic.host.agent import Agent
from remote_magic.host.exchange import Exchange, FileRange, read_range

DATA = os.urandom(1_000_000)
PARTS = [(0, 400_000), (400_000, 400_000), (800_000, 200_000)]


def _agents(tmp_path: Path) -> list[Agent]:
    """One agent per stream on the same work directory, as the kernel's transfer agents."""
    return [Agent(str(tmp_path / "work")) for _ in PARTS]


def _open(agents: list[Agent], path: str = "up/file") -> tuple[list[int], str]:
    first = agents[0].files.op_put_open(path, len(DATA), part=list(PARTS[0]))
    handles = [first["handle"]] + [
        agent.files.op_put_open(path, len(DATA), part=list(part), temp=first["temp"])
        for agent, part in zip(agents[1:], PARTS[1:])]
    return handles, first["temp"]


def _send(agent: Agent, handle: int, offset: int, length: int) -> None:
    for at in range(offset, offset + length, 150_000):
        agent.files.op_put_chunk(Exchange(DATA[at:min(at + 150_000, offset + length)]), handle)


def _leftovers(tmp_path: Path) -> list[str]:
    return [p.name for p in (tmp_path / "work" / "up").iterdir() if p.name.startswith(".")]


def test_ranges_sent_in_any_order_make_the_file(tmp_path: Path) -> None:
    agents = _agents(tmp_path)
    handles, temp = _open(agents)
    for index in (2, 0, 1):
        _send(agents[index], handles[index], *PARTS[index])
    assert [agents[i].files.op_put_close(handles[i]) for i in (1, 2)] == [400_000, 200_000]
    assert not (tmp_path / "work" / "up" / "file").exists()  # only the first puts it in place
    assert agents[0].files.op_put_close(handles[0]) == 400_000
    assert (tmp_path / "work" / "up" / "file").read_bytes() == DATA
    assert not Path(temp).exists() and _leftovers(tmp_path) == []


def test_a_range_cut_short_fails_and_the_file_is_dropped(tmp_path: Path) -> None:
    agents = _agents(tmp_path)
    handles, _ = _open(agents)
    _send(agents[0], handles[0], *PARTS[0])
    _send(agents[1], handles[1], 400_000, 250_000)  # 150,000 bytes short
    _send(agents[2], handles[2], *PARTS[2])
    with pytest.raises(ValueError, match="received 250000 of 400000 bytes"):
        agents[1].files.op_put_close(handles[1])
    agents[2].files.op_put_close(handles[2])
    assert agents[0].files.op_put_close(handles[0], abandon=True) == 0  # the kernel's call
    assert not (tmp_path / "work" / "up" / "file").exists() and _leftovers(tmp_path) == []


def test_a_last_range_that_never_came_is_caught_by_the_first(tmp_path: Path) -> None:
    agents = _agents(tmp_path)
    handles, _ = _open(agents)
    _send(agents[0], handles[0], *PARTS[0])
    _send(agents[1], handles[1], *PARTS[1])
    agents[1].files.op_put_close(handles[1])
    with pytest.raises(ValueError, match="800000 bytes in all, not 1000000"):
        agents[0].files.op_put_close(handles[0])
    assert not (tmp_path / "work" / "up" / "file").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("temp", ["../elsewhere/.file.1.ab.part", "up/.other.1.ab.part",
                                  "up/.file.1.ab.txt"])
def test_a_range_joins_only_an_uploads_own_temporary_file(tmp_path: Path, temp: str) -> None:
    agent = Agent(str(tmp_path / "work"))
    (tmp_path / "work" / "up").mkdir(parents=True)
    with pytest.raises(ValueError, match="is not an upload's temporary file"):
        agent.files.op_put_open("up/file", 10, part=[5, 5],
                                temp=str(tmp_path / "work" / temp))


def test_a_part_outside_the_file_is_refused(tmp_path: Path) -> None:
    agent = Agent(str(tmp_path / "work"))
    with pytest.raises(ValueError, match="is not within its 10 bytes"):
        agent.files.op_put_open("up/file", 10, part=[8, 5])


def test_a_range_of_a_file_is_fetched_alone(tmp_path: Path) -> None:
    agent = Agent(str(tmp_path / "work"))
    (tmp_path / "work" / "blob").write_bytes(DATA)
    got = bytearray()

    def take(chunk: bytes | FileRange) -> None:
        got.extend(read_range(chunk) if isinstance(chunk, FileRange) else chunk)

    answer = agent.files.op_get(Exchange(stream=take), "blob", offset=300_000, length=500_000)
    assert answer == {"size": 500_000} and bytes(got) == DATA[300_000:800_000]
    got.clear()
    answer = agent.files.op_get(Exchange(stream=take), "blob", offset=900_000, length=500_000)
    assert answer == {"size": 100_000} and bytes(got) == DATA[900_000:]  # the file's end
