"""What every panel shares: a widget tree fed by a bus, and a static HTML form beside it.

How a notebook front end picks what to show: an output carries one *bundle* of
representations, and JupyterLab renders the richest one it has a renderer for. With
the ipywidgets manager installed that is the widget view
(``application/vnd.jupyter.widget-view+json``), which only names a model living in the
kernel; a notebook reopened later (kernel gone, widget state not saved) shows "Error
displaying widget: model not found" for it, although the bundle also holds
``text/html``. nbconvert and nbviewer skip a widget view whose state is not saved in
the notebook and show the ``text/html`` beside it.

So a panel is displayed with a display id, and when its story is over (the run
finished, the cluster closed) :meth:`EventView.finalize` *updates that output* to the
static HTML and text only: the saved notebook then holds the last state, which every
front end shows. While the panel is live the output is the widget with its HTML
fallback: a notebook saved mid-run and reopened in JupyterLab shows the widget error
for that panel (nbviewer and nbconvert show the fallback, the state when it was
displayed); JupyterLab's "Save Widget State Automatically" setting avoids it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

logger = logging.getLogger(__name__)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class EventView:
    """Base of the panels: ``widget`` (the root box), bus subscription and display.

    Subclasses set ``self.widget`` and ``self._unsubscribe`` and implement
    :meth:`_fallbacks` (the ``text/plain`` and ``text/html`` forms); they call
    :meth:`finalize` when what they show can no longer change.
    """

    widget: widgets.Box
    disposed: bool = False
    final: bool = False
    _unsubscribe: Callable[[], None] | None = None

    def __init__(self) -> None:
        self._handles: list[Any] = []  # display handles of the outputs showing the panel
        self._display_lock = threading.Lock()

    def _fallbacks(self) -> dict[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _bundle(self) -> dict[str, Any]:
        """The fallbacks, and the widget view while the panel is live."""
        data: dict[str, Any] = dict(self._fallbacks())
        if not self.final and not self.disposed and self.widget._model_id is not None:
            data[WIDGET_VIEW] = {
                "version_major": 2, "version_minor": 0, "model_id": self.widget._model_id,
            }
        return data

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The widget view plus ``text/html`` and ``text/plain`` fallbacks, so the panel
        reads well where no widget manager runs (nbconvert, GitHub, a terminal); only the
        fallbacks once the panel is final."""
        data = self._bundle()
        if include:
            data = {k: v for k, v in data.items() if k in include}
        if exclude:
            data = {k: v for k, v in data.items() if k not in exclude}
        return data

    def _ipython_display_(self) -> None:
        """Display the bundle with a display id, kept for :meth:`finalize`."""
        from IPython.display import display

        handle = display(self._bundle(), raw=True, display_id=True)
        if handle is None:
            return
        with self._display_lock:
            if not self.final:
                self._handles.append(handle)
                return
        handle.update(dict(self._fallbacks()), raw=True)  # it became final meanwhile

    def finalize(self) -> None:
        """The panel's story is over: every output that shows it becomes the static
        HTML and text of the last state (idempotent; safe from any thread)."""
        with self._display_lock:
            if self.final:
                return
            self.final = True
            handles, self._handles = self._handles, []
        if not handles:
            return
        static = dict(self._fallbacks())
        for handle in handles:
            try:
                handle.update(static, raw=True)
            except Exception:  # a kernel shutting down must not break the run's end
                logger.debug("could not update the display %r", handle, exc_info=True)

    def close(self) -> None:
        """Stop listening to the bus and close the widgets (idempotent)."""
        self._stop_listening()
        self._before_close()
        if self.disposed:
            return
        self.disposed = True
        for child in self._all_widgets():
            child.close()

    def _before_close(self) -> None:
        """Hook for subclasses (e.g. cancel a pending redraw)."""

    def _stop_listening(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def _all_widgets(self) -> list[widgets.Widget]:
        found: list[widgets.Widget] = []
        stack: list[widgets.Widget] = [self.widget]
        while stack:
            w = stack.pop()
            found.append(w)
            stack.extend(getattr(w, "children", ()))
        return found
