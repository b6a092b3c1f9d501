"""OpenSSH's questions, answered by the user in the notebook.

A kernel has no terminal, so OpenSSH cannot ask for a password, a one-time code or whether to
trust a new host key the way it does in a shell. It can ask a program instead (SSH_ASKPASS,
forced with SSH_ASKPASS_REQUIRE=force): ours is a small script that hands the question over a
Unix socket, in a folder only the user can enter, to the thread that started `ssh`, which asks
the user through `prompt` (in a notebook, the front end's own input box) and hands the answer
back. The question is OpenSSH's own text, so the user sees what they would see in a terminal.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

Prompt = Callable[[str, bool], str]  # (prompt text, echo) -> answer

SOCKET_ENV = "REMOTE_MAGIC_ASKPASS_SOCKET"
log = logging.getLogger(__name__)
MAX_MESSAGE = 64 * 1024

# The script OpenSSH runs for each question (argv[1]); it must start fast and import nothing
# of ours. It prints the answer and exits 0, or exits 1 when the user gave none, which OpenSSH
# takes as a cancelled prompt.
HELPER = f"""\
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(os.environ["{SOCKET_ENV}"])
    s.sendall(json.dumps({{"prompt": sys.argv[1] if len(sys.argv) > 1 else "",
                           "kind": os.environ.get("SSH_ASKPASS_PROMPT", "")}}).encode() + b"\\n")
    answer = json.loads(s.makefile("rb").readline())
except (OSError, ValueError, KeyError):
    sys.exit(1)
if not answer.get("ok"):
    sys.exit(1)
sys.stdout.write(answer["answer"] + "\\n")
"""


class Askpass:
    """The listening end for one `ssh` that may ask questions; made in `folder` (0700)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.script = folder / "askpass"
        self.script.write_text(f"#!{sys.executable}\n{HELPER}")
        self.script.chmod(0o700)
        self.path = folder / "askpass.sock"
        self.path.unlink(missing_ok=True)
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(self.path))
        self._server.listen(4)
        self.asked: list[str] = []  # the questions, for the error when a login fails

    def environment(self) -> dict[str, str]:
        """The environment for `ssh`: every question goes to the helper, never a terminal."""
        env = dict(os.environ)
        env.update({"SSH_ASKPASS": str(self.script), "SSH_ASKPASS_REQUIRE": "force",
                    SOCKET_ENV: str(self.path), "DISPLAY": env.get("DISPLAY", ":0")})
        return env

    def serve(self, process: subprocess.Popen[bytes], prompt: Prompt,
              poll: float = 0.05) -> int:
        """Answer questions until `process` exits; its exit status. An exception from
        `prompt` (no user to ask, an interrupt) ends `process` and is raised; one that says
        there is no input to read becomes `Unanswered`, for the caller to explain."""
        self._server.settimeout(poll)
        while process.poll() is None:
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    question = json.loads(conn.makefile("rb").readline(MAX_MESSAGE))
                    text = str(question.get("prompt", ""))
                except (OSError, ValueError, AttributeError):
                    continue
                self.asked.append(text)
                log.debug("OpenSSH asks: %s", text.strip())  # the question; never the answer
                try:
                    answer = prompt(text.rstrip() + " ", _echoes(text, question.get("kind")))
                except BaseException as exc:
                    _send(conn, {"ok": False})
                    process.kill()
                    process.wait()
                    if isinstance(exc, (EOFError, OSError)):
                        raise Unanswered(text, str(exc) or type(exc).__name__) from exc
                    raise
                _send(conn, {"ok": True, "answer": answer})
        return process.returncode

    def close(self) -> None:
        self._server.close()
        self.path.unlink(missing_ok=True)


class Unanswered(Exception):
    """OpenSSH asked `question`, and nobody could answer it here (`why`): no input box,
    no terminal, stdin closed."""

    def __init__(self, question: str, why: str) -> None:
        super().__init__(question, why)
        self.question, self.why = question.strip(), why


def _echoes(text: str, kind: object) -> bool:
    """Whether the answer may be shown as it is typed: a yes/no question (OpenSSH's host key
    confirmation), never a password or code."""
    return kind == "confirm" or "(yes/no" in text


def _send(conn: socket.socket, message: dict[str, object]) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass
