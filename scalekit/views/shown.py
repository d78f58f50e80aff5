"""How a session or a run shows itself in a notebook: as its panel.

A ``ClusterSession``, a ``TrainingRun`` or an ``AttachedRun`` as a cell's last
expression (or given to ``display``) shows its ``panel`` (see
:mod:`scalekit.widgets.view`): through the panel's display handle, so that when the
panel's story is over its output becomes the static HTML of the last state, which a
reopened notebook still shows. This mixin holds the two hooks IPython looks for; the
panel itself is made by the class (widgets are imported only there, on first use).
"""

from __future__ import annotations

from typing import Any


class ShownAsPanel:
    """Mixin: display the object as its ``panel`` (a property of the class)."""

    panel: Any

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return self.panel._repr_mimebundle_(include=include, exclude=exclude)

    def _ipython_display_(self) -> None:
        self.panel._ipython_display_()


__all__ = ["ShownAsPanel"]
