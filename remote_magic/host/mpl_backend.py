"""The matplotlib backend of a task: draws with Agg and shows figures as the notebook's inline
backend does, into the task's displays.

`plt.show()` shows every open figure and closes them, so that the next plot starts a new
figure, as it would in the notebook (with plain Agg the next plot would draw over the same
figure); `fig.show()` shows one figure. The runner selects it with MPLBACKEND.
"""

from __future__ import annotations

from typing import Any

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

from . import displays


class FigureManager(FigureManagerBase):
    def show(self) -> None:
        if displays.current is not None:
            displays.current.emit(displays.current.figure(self.canvas.figure))


class FigureCanvas(FigureCanvasAgg):
    manager_class = FigureManager


def show(*args: Any, **kwargs: Any) -> None:
    if displays.current is not None:
        displays.current.show_figures()
