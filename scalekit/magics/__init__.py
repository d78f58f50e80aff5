"""The ``%scalekit`` line magic: start, scale, adapt, inspect and stop a cluster.

::

    %load_ext scalekit
    %scalekit up --workers 2          # start a local cluster and show its panel
    %scalekit scale 4
    %scalekit adapt 1 8               # or: %scalekit adapt off
    %scalekit status
    %scalekit down

Three rooms:

- :mod:`~scalekit.magics.parsing` turns a line into a :class:`Command` (pure, no
  cluster, unit-tested as a table);
- :mod:`~scalekit.magics.actions` carries a command out on the current session of
  :mod:`scalekit.session`'s registry, the same one ``sk.fit`` and the JupyterLab sidebar
  use, whether ``%scalekit up`` or ``sk.cluster()`` started it;
- :mod:`~scalekit.magics.hooks` loads and unloads the extension and closes clusters when
  the kernel shuts down.

Loading the extension imports neither torch, ``distributed`` nor ipywidgets; ``up``
imports them when it starts a cluster.
"""

from __future__ import annotations

from scalekit.magics.actions import ScalekitMagics
from scalekit.magics.hooks import _registered as _registered  # finds the magic of a shell
from scalekit.magics.hooks import load_ipython_extension, unload_ipython_extension
from scalekit.magics.parsing import Command, parse

__all__ = [
    "Command",
    "ScalekitMagics",
    "load_ipython_extension",
    "parse",
    "unload_ipython_extension",
]
