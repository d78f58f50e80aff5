"""A script that starts a cluster without the main guard, said plainly.

A local cluster's worker processes are started with multiprocessing's "spawn": each one
imports the main script again. A script that calls ``sk.cluster()`` at its top level
(no ``if __name__ == "__main__":``) would start a cluster from inside every worker;
multiprocessing answers with a bootstrapping ``RuntimeError`` that does not say what to
change. :mod:`scalekit.session` asks here first, and again when a start failed.
"""

from __future__ import annotations

from scalekit.errors import UsageError

_GUARD = 'if __name__ == "__main__":'


def refuse_unguarded_script_start() -> None:
    """A worker process starting imports the main script again (multiprocessing's
    "spawn"); a script that calls ``sk.cluster()`` at its top level would then start a
    cluster from inside every worker. Say so, with the fix, instead of multiprocessing's
    bootstrapping error."""
    import multiprocessing

    # set while a spawned process re-imports the main script (what multiprocessing's own
    # check, spawn._check_not_importing_main, reads)
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise UsageError(
            "sk.cluster() ran while a worker process was starting: this script calls it "
            f"at its top level, and every worker process imports the script again. Put "
            f"the code that starts the cluster under `{_GUARD}` (see the README's "
            "'In a script').")


def unguarded_script_hint() -> str:
    """The fix, when the failed start came from a script without the main guard."""
    import sys

    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path:
        return ""  # a notebook or the REPL: not this problem
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError:
        return ""
    if "__main__" in source:
        return ""
    return (f"{path} starts the cluster at its top level, and each worker process imports "
            f"it again; put that code under `{_GUARD}`")
