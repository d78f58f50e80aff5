"""Kernel hooks: loading and unloading the extension, and closing clusters at shutdown.

Clusters the magic started are closed by ``%unload_ext scalekit`` and at interpreter exit
(``atexit``). Inside an ipykernel, every cluster of the process (the magic's and those of
``sk.cluster()``) is closed when the kernel gets a ``shutdown_request`` (shutdown or
restart): ipykernel calls ``kernel.do_shutdown(restart)`` and *then* SIGTERM/SIGKILLs
every child process in its process group, so the clusters are closed in
``do_shutdown``, while the workers are still there to be retired cleanly.
"""

from __future__ import annotations

import atexit
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from scalekit.magics.actions import ScalekitMagics, _bounded

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 2.0  # jupyter_client SIGTERMs a kernel still up 2.5 s after shutdown_request

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def _at_kernel_shutdown(magics: ScalekitMagics) -> None:
    """Close every cluster of this process, then let multiprocessing's tracker exit.

    The process is about to end, so clusters started through the Python API
    (``scalekit.cluster``) are closed too.
    """
    magics.close_all()
    _close_api_sessions()
    _stop_resource_tracker()


def _close_api_sessions() -> None:
    session_module = sys.modules.get("scalekit.session")  # not imported: none started
    if session_module is not None:
        session_module.close_all()


def _stop_resource_tracker() -> None:
    """Stop the resource tracker process that spawning workers started.

    It ignores SIGTERM: left alone, it holds ipykernel's termination of children for
    ~4 s (SIGTERMs, then SIGKILL), past jupyter_client's 2.5 s grace, and the kernel
    itself is then SIGTERMed instead of exiting normally. Closing its pipe makes it
    clean up and exit; multiprocessing restarts it on demand.
    """
    try:
        from multiprocessing import resource_tracker

        stop = getattr(resource_tracker._resource_tracker, "_stop", None)
        if stop is not None:
            stop()
    except Exception:
        logger.debug("stopping the multiprocessing resource tracker failed", exc_info=True)


def _hook_kernel_shutdown(shell: Any, magics: ScalekitMagics) -> None:
    """Close clusters in ``kernel.do_shutdown``, before ipykernel kills the children.

    ipykernel (6 and 7) answers ``shutdown_request`` with ``do_shutdown(restart)``, then
    ``_at_shutdown()``, which SIGTERMs and SIGKILLs the kernel's process group; ``atexit``
    runs only after that, when the workers are already gone.
    """
    kernel = getattr(shell, "kernel", None)
    original = getattr(kernel, "do_shutdown", None)
    if original is None or getattr(original, "_scalekit_magics", None) is not None:
        return

    @functools.wraps(original)
    def do_shutdown(restart: bool) -> Any:
        try:
            _bounded(lambda: _at_kernel_shutdown(magics), SHUTDOWN_TIMEOUT)
        except Exception:  # shutting down must go on whatever happened
            logger.warning("closing clusters at kernel shutdown failed", exc_info=True)
        return original(restart)

    do_shutdown._scalekit_magics = magics  # type: ignore[attr-defined]
    do_shutdown._scalekit_previous = kernel.__dict__.get("do_shutdown")  # type: ignore[attr-defined]
    kernel.do_shutdown = do_shutdown


def _unhook_kernel_shutdown(shell: Any) -> None:
    kernel = getattr(shell, "kernel", None)
    hook = getattr(kernel, "__dict__", {}).get("do_shutdown")
    if getattr(hook, "_scalekit_magics", None) is None:
        return
    previous = hook._scalekit_previous
    if previous is None:
        del kernel.do_shutdown  # back to the class's method
    else:
        kernel.do_shutdown = previous


def _registered(shell: Any) -> ScalekitMagics | None:
    magics = shell.magics_manager.registry.get(ScalekitMagics.__name__)
    return magics if isinstance(magics, ScalekitMagics) else None


def load_ipython_extension(
    ipython: Any,
    *,
    factory: Callable[..., Any] | None = None,
    display: Callable[[Any], None] | None = None,
) -> ScalekitMagics:
    """Register ``%scalekit`` on ``ipython`` (idempotent) and return the magics object.

    ``factory`` and ``display`` replace the session factory and the display function
    (tests inject fakes here).
    """
    magics = _registered(ipython)
    if magics is None:
        magics = ScalekitMagics(ipython, factory=factory, display=display)
        ipython.register_magics(magics)
        atexit.register(magics.close_all)
        _hook_kernel_shutdown(ipython, magics)
    else:
        magics.factory = factory or magics.factory
        magics.display = display or magics.display
    from scalekit import labext  # the JupyterLab extension's comm target (extensions/)

    labext.register(ipython)
    return magics


def unload_ipython_extension(ipython: Any) -> None:
    """Close the clusters ``%scalekit`` started and remove the magic."""
    magics = _registered(ipython)
    if magics is None:
        return
    try:
        magics.close_all()
    finally:
        atexit.unregister(magics.close_all)
        _unhook_kernel_shutdown(ipython)
        manager = ipython.magics_manager
        manager.registry.pop(ScalekitMagics.__name__, None)
        for name in magics.magics.get("line", {}):
            manager.magics["line"].pop(name, None)
        extensions = getattr(ipython, "extension_manager", None)
        if extensions is not None:  # called directly: let `%load_ext scalekit` work again
            extensions.loaded.discard("scalekit")
