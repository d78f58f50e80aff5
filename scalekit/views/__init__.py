"""View-models: pure folds of events into what every view shows, and their renderers.

Like the plain tqdm under tqdm's notebook bar, this layer knows nothing of the front end.
It sits under :mod:`scalekit.widgets` (the ipywidgets panels), :mod:`scalekit.labext`
(the JupyterLab sidebar) and the text forms (``repr(session)``, ``repr(run)``, the
magic's ``status``), and above :mod:`scalekit.events`; it imports only events, config
and errors, never ipywidgets, torch, ``distributed`` or the training runtime.

State (folds of events)
    :mod:`~scalekit.views.cluster_state` (:class:`ClusterState`, and how long a notice
    holds), :mod:`~scalekit.views.training_state` (:class:`TrainingState`),
    :mod:`~scalekit.views.timeline` (a run's timeline entries),
    :mod:`~scalekit.views.incidents` (failed ranks as one incident per process group),
    :mod:`~scalekit.views.throughput` (samples/s, defined once),
    :mod:`~scalekit.views.memory` (memory against the machine's),
    :mod:`~scalekit.views.columns` (the epoch log's columns).
Formatting
    :mod:`~scalekit.views.fmt` (numbers as text), :mod:`~scalekit.views.html` (the
    HTML helpers: escaping, colours, bars), :mod:`~scalekit.views.bars` (a worker's
    bars), :mod:`~scalekit.views.axes` and :mod:`~scalekit.views.charts` (SVG).
Renderers
    :mod:`~scalekit.views.cluster_render`, :mod:`~scalekit.views.gpu_render`,
    :mod:`~scalekit.views.training_render`, :mod:`~scalekit.views.timeline_render`
    (text and HTML), :mod:`~scalekit.views.snapshot` (the sidebar's JSON) and
    :mod:`~scalekit.views.lab_text` (the strings in it: the extension formats none).
Display
    :mod:`~scalekit.views.shown` (a session or a run shown in a notebook as its panel).
"""

from __future__ import annotations

from scalekit.views.cluster_state import ClusterState
from scalekit.views.training_state import TrainingState

__all__ = ["ClusterState", "TrainingState"]
