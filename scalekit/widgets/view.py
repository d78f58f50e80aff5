"""What every panel shares: a widget tree fed by a bus, and fallbacks without a frontend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class EventView:
    """Base of the panels: ``widget`` (the root box), bus subscription and display.

    Subclasses set ``self.widget`` and ``self._unsubscribe`` and implement
    :meth:`_fallbacks` (the ``text/plain`` and ``text/html`` forms).
    """

    widget: widgets.Box
    disposed: bool = False
    _unsubscribe: Callable[[], None] | None = None

    def _fallbacks(self) -> dict[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The widget view plus ``text/html`` and ``text/plain`` fallbacks, so the panel
        reads well where no widget manager runs (nbconvert, GitHub, a terminal)."""
        data: dict[str, Any] = dict(self._fallbacks())
        if not self.disposed and self.widget._model_id is not None:
            data[WIDGET_VIEW] = {
                "version_major": 2, "version_minor": 0, "model_id": self.widget._model_id,
            }
        if include:
            data = {k: v for k, v in data.items() if k in include}
        if exclude:
            data = {k: v for k, v in data.items() if k not in exclude}
        return data

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
