"""The kernel's end of a follow: a task's outputs copied here while the host still writes them.

A task that was sent a lot of data usually sends a lot back. For such a task the transport
asks a spare agent of its own (not the transfer agent, which it would hold for the length of
the task) to stream the outputs file as the runner writes it (host/follow.py). The copy lands
in a temporary file beside the outputs' place here, and takes that place once the host says
it is the task's whole outputs file; otherwise it is removed, and reading the results fetches
the file as usual. Nothing the user sees depends on it but the time.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from ...wire.taskdir import TaskPaths
from ...wire.tempnames import temp_prefix
from ..agent_client import AgentClient

log = logging.getLogger(__name__)

STALL = 15.0  # seconds without a byte after which a follow the results wait for is given up


class Follow:
    """One task's outputs, followed in a thread from the moment `go` says the task is in
    place on the host. A copy the host vouches for goes straight to the outputs file's place
    here: a kernel that never reads the results (or dies) leaves no temporary file behind."""

    def __init__(self, task_id: str, local: Path, spare: Callable[[], AgentClient],
                 min_size: int, done: Callable[[], None]) -> None:
        self.task_id = task_id
        self.target = TaskPaths(local).outputs
        self._spare, self._min_size, self._done = spare, min_size, done
        self._go = threading.Event()
        self._lock = threading.Lock()
        self._agent: AgentClient | None = None
        self._cancelled = False
        self._temp: str | None = None
        self.placed = False  # the whole outputs file is at `target`
        self.why = "not followed"  # why not, for the log
        self._thread = threading.Thread(target=self._run, name=f"follow-{task_id}",
                                        daemon=True)
        self._thread.start()

    def go(self) -> None:
        """The task is in place on the host: follow it."""
        self._go.set()

    def _run(self) -> None:
        temp = None
        try:
            # the spare agent starts now: one started during the upload slows it down more
            self._go.wait()
            agent = self._spare()
            with self._lock:
                if self._cancelled:
                    return
                self._agent = agent
                self.target.parent.mkdir(parents=True, exist_ok=True)
                fd, temp = tempfile.mkstemp(dir=self.target.parent,
                                            prefix=temp_prefix(self.target))
                self._temp = temp
            with os.fdopen(fd, "wb", buffering=0) as file:
                answer, _ = agent.call("follow", {"task": self.task_id,
                                                  "min_size": self._min_size},
                                       timeout=None, sink=fd)
                received = file.tell()  # the reader's duplicate moves the same offset
            if answer.get("final") and received == answer.get("size"):
                os.replace(temp, self.target)
                temp, self.placed = None, True
            else:
                self.why = answer.get("why", "not whole")
        except Exception as exc:  # noqa: BLE001 - the outputs are fetched as usual
            self.why = str(exc)
        finally:
            if temp is not None:
                Path(temp).unlink(missing_ok=True)
            self._done()

    def take(self, target: Path, size: int) -> bool:
        """Wait for the follow to end (as long as bytes keep coming): True if it left the
        outputs file of `size` bytes at `target`, False if it is to be fetched."""
        seen, since = -1, time.monotonic()
        while self._thread.is_alive():
            self._thread.join(0.25)
            now = self._size()
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since > STALL:
                self.why = f"no byte came for {STALL:.0f} s"
                self.cancel()
                self._thread.join()
        kept = self.placed and target == self.target and self._size_of(target) == size
        log.debug("outputs of %s: the followed copy is %s", self.task_id,
                  "kept" if kept else f"not kept ({self.why})")
        return kept

    def cancel(self) -> None:
        """Stop following: closing the spare agent's channel ends the stream on the host at
        once, and the thread removes its partial copy."""
        with self._lock:
            self._cancelled = True
            agent = self._agent
        self._go.set()
        if agent is not None and self._thread.is_alive():
            agent.close()

    def _size(self) -> int:
        return self._size_of(self._temp) if self._temp else 0

    @staticmethod
    def _size_of(path: str | Path) -> int:
        try:
            return os.stat(path).st_size
        except OSError:
            return -1
