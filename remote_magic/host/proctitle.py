"""Names that tell the agent, a task's supervisor and its runner apart in `ps` and `pkill`.

All three are the same `python -m remote_magic...` process (forked), so their command lines
look alike and `pkill -f remote_magic.host.agent` would take the tasks with it. Linux keeps a
short name per process besides the command line (`ps -o comm`, what `pkill NAME` matches
by default): each sets its own. Elsewhere nothing changes. The same `prctl` ties the agent's
warm process to the agent (`die_with_parent`).
"""

from __future__ import annotations

import os
import sys

PR_SET_NAME = 15  # from <linux/prctl.h>
PR_SET_PDEATHSIG = 1


def set_name(name: str) -> None:
    """Set this process's short name (at most 15 bytes are kept)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl: keep the name we have
        pass


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when `parent` ends (Linux), even while it is busy:
    the agent's warm process may be deep in an import that never returns. Elsewhere the
    caller's own check of its parent is all there is."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # SIGKILL
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it ended before the request took effect
        os._exit(0)
