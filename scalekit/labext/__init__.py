"""The kernel side of the JupyterLab extension: snapshots out, user intents in, over comms.

dask-labextension cannot see clusters that a kernel created: its clusters live in the
Jupyter server. scalekit's clusters live in the kernel, so the JupyterLab extension
(``extensions/``) talks to the kernel through the Jupyter comm protocol:

- **Snapshots out.** A :class:`~scalekit.labext.bridge.LabBridge` subscribes to the
  event bus of every session in the registry (:mod:`scalekit.session_registry`) (the same bus and
  the same JSON-safe events the ipywidgets panels draw), folds them with the panels'
  view-models (:mod:`scalekit.views`), and sends a compact JSON snapshot of the current
  cluster and of this kernel's training runs (:mod:`scalekit.views.snapshot`) at most
  twice a second (:data:`~scalekit.config.MIN_REFRESH_S`), and only when something
  changed (plus a slow heartbeat).
  Snapshots go on a kernel-side *broadcast* comm that is never opened: its ``comm_msg``
  messages travel on IOPub to every frontend of the kernel, frontends without the
  extension ignore an unknown comm id, and the extension reads them from IOPub. They
  flow from a background thread, so the status bar moves while a cell runs.
- **Intents in.** The extension opens its own comm to the target :data:`TARGET` (once
  it has seen a snapshot, so kernels without scalekit are never asked anything) and
  sends ``{"action": "scale", "n": 3}``, ``adapt`` (``minimum``, ``maximum``),
  ``stop_adapt``, ``close`` or ``sync`` (:mod:`scalekit.labext.intents`). Without a
  ``cluster`` id an intent goes to the registry's current session, the one ``%scalekit``
  and ``sk.fit`` use. The bridge calls the session's own methods
  (``scale(n, source="sidebar")`` ...) exactly as the ipywidgets panel does: one
  source of truth, no second code path. Each intent is answered on that comm with
  ``{"type": "reply", "ok": ..., "message": ...}``; a rejected value also shows as the
  session's error notice. A message that is no intent at all (its data a string, a
  list, ...) is answered too, with ``ok: false`` saying what shape was expected.

Message shapes (``protocol`` is :data:`PROTOCOL` on every message)::

    {"protocol": "scalekit/2", "type": "snapshot", "seq": 7, "time": 1.7e9,
     "cluster": {"id", "backend", "status", "workers": [{..., "view"}], "n_workers",
                 "requested", "totals": {..., "gpu"?}, "adaptive": {...} | None,
                 "dashboard_link", "max_workers", "notice": {...} | None,
                 "view": {"summary", "status_bar", "memory_warning",
                          "status_line": {...} | None}} | None,
     "clusters": 1,
     "runs": [{"run_id", "status", "epochs_done", "max_epochs", "progress", "loss",
               "loss_key", "last_checkpoint": {...} | None, "recoveries", ...,
               "view": {"headline", "status_bar", "details": [...], "alerts": [...]}},
              ...]}

The ``view`` parts are what the sidebar and the status bar show, word for word: made by
:mod:`scalekit.views.lab_text` with the notebook panels' own formatting, so the views
agree (and the TypeScript formats no numbers). A worker's ``view`` has its ``cpu`` and
``memory`` bars (``fraction``, ``label``, ``warn``), its tooltip and its GPU row.

A worker with a GPU also carries ``"gpu": {"name", "resource", "monitored",
"utilization", "memory", "memory_total"}`` (``monitored`` false: no NVML numbers, as
without nvidia-ml-py) and the totals ``"gpu": {"workers", "monitored", "utilization",
"memory", "memory_total"}``; neither key is there on a CPU-only cluster.

The package is two rooms: :mod:`~scalekit.labext.bridge` (sessions, throttle, comms)
and :mod:`~scalekit.labext.intents` (checking and carrying out intents); the snapshot
builders are pure view code in :mod:`scalekit.views.snapshot`. Importing it imports
neither torch, ``distributed`` nor ipywidgets: sessions are found in
:mod:`scalekit.session_registry`, which imports no backend.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from scalekit.labext.bridge import HEARTBEAT, PROTOCOL, TARGET, LabBridge

__all__ = ["HEARTBEAT", "PROTOCOL", "TARGET", "LabBridge", "bridge", "register",
           "register_current"]

_BRIDGE: LabBridge | None = None
_REGISTER = threading.Lock()


def register(shell: Any, *, manager: Any = None,
             create_comm: Callable[..., Any] | None = None) -> LabBridge | None:
    """Register the comm target :data:`TARGET` in ``shell``'s kernel and start the bridge.

    Called by ``%load_ext scalekit`` (idempotent). Outside a kernel (plain IPython, a
    test's fake shell without a comm manager) it does nothing and returns ``None``.
    ``manager`` and ``create_comm`` replace the kernel's comm manager and comm factory.
    """
    global _BRIDGE
    kernel = getattr(shell, "kernel", None)
    manager = manager or getattr(kernel, "comm_manager", None)
    if manager is None or not hasattr(manager, "register_target"):
        return None
    with _REGISTER:
        if _BRIDGE is not None and manager.targets.get(TARGET) is not None:
            return _BRIDGE
        if create_comm is None:
            import comm

            create_comm = comm.create_comm
        # never opened (primary=False): no comm_open for frontends to refuse; its
        # comm_msg reach every frontend on IOPub, which the extension reads
        broadcast = create_comm(target_name=TARGET, primary=False)
        bridge = _BRIDGE if _BRIDGE is not None else LabBridge()
        bridge.broadcast = broadcast
        manager.register_target(TARGET, bridge.attach)
        _BRIDGE = bridge
    return bridge.start()


def register_current() -> LabBridge | None:
    """:func:`register` in the IPython kernel this process runs, if any.

    For the code that starts a cluster (``sk.cluster()``): the sidebar then shows API
    clusters without ``%load_ext scalekit``. Outside a kernel (a script, plain Python,
    IPython in a terminal) it does nothing and returns ``None``; it never imports
    IPython itself (no IPython module loaded: no kernel to register in).
    """
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return register(shell) if shell is not None else None


def bridge() -> LabBridge | None:
    """The bridge :func:`register` started in this process, if any."""
    return _BRIDGE
