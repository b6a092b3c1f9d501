"""The kernel's end of a follow: a task's outputs copied here while the host still writes them.

A task that was sent a lot of data usually sends a lot back. For such a task the transport
asks a spare agent of its own (not the transfer agent, which it would hold for the length of
the task) to stream the outputs file as the runner writes it (host/follow.py). The copy lands
in a temporary file beside where the results go; when the results are read, it takes the
outputs file's place if the host says it is that file, whole, and is dropped otherwise (the
file is then fetched as usual). Nothing the user sees depends on it but the time.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ...wire.taskdir import TaskPaths
from ...wire.tempnames import temp_prefix
from ..agent_client import AgentClient

log = logging.getLogger(__name__)

STALL = 15.0  # seconds without a byte after which a follow the results wait for is given up


class Follow:
    """One task's outputs, followed in a thread from the moment `go` says the task is in
    place on the host (the spare agent starts meanwhile, while its inputs are sent)."""

    def __init__(self, task_id: str, local: Path, spare: Callable[[], AgentClient],
                 min_size: int, done: Callable[[], None]) -> None:
        self.task_id = task_id
        self.target = TaskPaths(local).outputs
        self._spare, self._min_size, self._done = spare, min_size, done
        self._go = threading.Event()
        self._lock = threading.Lock()
        self._agent: AgentClient | None = None
        self._cancelled = False
        self.temp: str | None = None
        self.answer: dict[str, Any] | None = None  # the host's, when the follow ended
        self.received = 0
        self._thread = threading.Thread(target=self._run, name=f"follow-{task_id}",
                                        daemon=True)
        self._thread.start()

    def go(self) -> None:
        """The task is in place on the host: follow it."""
        self._go.set()

    def _run(self) -> None:
        try:
            self._go.wait()  # (an agent started during the upload would slow it down more)
            agent = self._spare()
            with self._lock:
                if self._cancelled:
                    return
                self._agent = agent
                self.target.parent.mkdir(parents=True, exist_ok=True)
                fd, self.temp = tempfile.mkstemp(dir=self.target.parent,
                                                 prefix=temp_prefix(self.target))
            with os.fdopen(fd, "wb", buffering=0) as file:
                self.answer, _ = agent.call("follow", {"task": self.task_id,
                                                       "min_size": self._min_size},
                                            timeout=None, sink=fd)
                self.received = file.tell()  # the reader's duplicate moves the same offset
        except Exception as exc:  # noqa: BLE001 - the outputs are fetched as usual
            log.debug("follow of %s ended: %s", self.task_id, exc)
        finally:
            self._done()

    def take(self, target: Path, size: int) -> bool:
        """Wait for the follow to end (as long as bytes keep coming), and put the copy in
        `target`'s place if it is the outputs file, of `size` bytes; False: fetch it instead."""
        seen, since = -1, time.monotonic()
        while self._thread.is_alive():
            self._thread.join(0.25)
            now = self._size()
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since > STALL:
                self.cancel()
                self._thread.join()
        answer = self.answer or {}
        if self.temp is not None and answer.get("final") and \
                self.received == answer.get("size") == size:
            try:
                os.replace(self.temp, target)
            except OSError:  # another file system (the copy was made where the task began)
                pass
            else:
                self.temp = None
                log.debug("outputs of %s: the followed copy is kept", self.task_id)
                return True
        log.debug("outputs of %s: the followed copy is not kept (%s)", self.task_id,
                  answer.get("why", "no answer"))
        self.discard()
        return False

    def cancel(self) -> None:
        """Stop following (closing the spare agent's channel ends the stream on the host at
        once); the copy so far stays until `discard`."""
        with self._lock:
            self._cancelled = True
            agent = self._agent
        self._go.set()
        if agent is not None and self._thread.is_alive():
            agent.close()

    def discard(self) -> None:
        """Stop, and remove the copy (a follow still starting its agent makes none)."""
        self.cancel()
        with self._lock:
            temp = self.temp
        if temp is not None:
            self._thread.join()
            Path(temp).unlink(missing_ok=True)
            self.temp = None

    def _size(self) -> int:
        try:
            return os.stat(self.temp).st_size if self.temp else 0
        except OSError:
            return 0
