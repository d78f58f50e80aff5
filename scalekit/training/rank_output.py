"""Rank 0's printed output goes to the notebook, line by line.

skorch's ``PrintLog`` (and ``EarlyStopping``'s message, and a user's ``print`` in a
callback) write to ``sys.stdout`` of the process they run in: on a worker, that is the
worker's log, out of the notebook's sight. While rank 0 trains, :func:`forwarding`
routes what its *training thread* writes to ``sys.stdout``/``sys.stderr`` to a sender
(a typed message to the controller, which shows it in the notebook); what other threads
of the worker write goes where it always went.

Only complete lines travel. A carriage return rewrites the line (as on a terminal), so a
progress bar that redraws itself in place and erases itself at the end (skorch's
``ProgressBar``) sends nothing: the training panel shows the progress instead.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

Send = Callable[[str, str], None]  # (stream name, text of one or more whole lines)


class LineSplitter:
    """Collects written text and hands on whole lines (without their newline)."""

    def __init__(self, stream: str, send: Send) -> None:
        self.stream = stream
        self.send = send
        self.pending = ""
        self.sent = 0  # lines handed on

    def write(self, text: str) -> None:
        self.pending += text
        if "\n" not in self.pending:
            return
        *lines, self.pending = self.pending.split("\n")
        lines = [line.rsplit("\r", 1)[-1] for line in lines]
        self.sent += len(lines)
        self.send(self.stream, "\n".join(lines))

    def close(self) -> None:
        """Hand on an unfinished last line, unless a carriage return erased it."""
        rest, self.pending = self.pending.rsplit("\r", 1)[-1], ""
        if rest.strip():
            self.sent += 1
            self.send(self.stream, rest)


class _Routed:
    """Stands in for ``sys.stdout``/``sys.stderr``: one thread's writes go to a
    :class:`LineSplitter`, everybody else's to the original stream."""

    def __init__(self, original: TextIO, thread: int, splitter: LineSplitter) -> None:
        self._original = original
        self._thread = thread
        self._splitter = splitter

    def write(self, text: str) -> int:
        if threading.get_ident() == self._thread:
            self._splitter.write(text)
        else:
            self._original.write(text)
        return len(text)

    def flush(self) -> None:
        if threading.get_ident() != self._thread:
            self._original.flush()

    def isatty(self) -> bool:  # tqdm and friends ask: no terminal to redraw on
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


@contextlib.contextmanager
def forwarding(send: Send) -> Iterator[list[LineSplitter]]:
    """While inside, what this thread prints goes to ``send`` as whole lines; yields
    the two splitters (their ``sent`` counts the lines)."""
    thread = threading.get_ident()
    splitters = [LineSplitter("stdout", send), LineSplitter("stderr", send)]
    saved = sys.stdout, sys.stderr
    sys.stdout = _Routed(saved[0], thread, splitters[0])  # type: ignore[assignment]
    sys.stderr = _Routed(saved[1], thread, splitters[1])  # type: ignore[assignment]
    try:
        yield splitters
    finally:
        # put back what was there, unless someone replaced our stand-ins meanwhile
        if isinstance(sys.stdout, _Routed) and sys.stdout._splitter is splitters[0]:
            sys.stdout = saved[0]
        if isinstance(sys.stderr, _Routed) and sys.stderr._splitter is splitters[1]:
            sys.stderr = saved[1]
        for splitter in splitters:
            splitter.close()


def printing_to_notebook(rank: int, send: Send) -> contextlib.AbstractContextManager[Any]:
    """Rank 0's printed lines go to ``send`` (for the notebook); the other ranks' stay
    in their worker's log (their skorch callbacks are silenced: callback_router)."""
    return forwarding(send) if rank == 0 else contextlib.nullcontext()


__all__ = ["LineSplitter", "forwarding", "printing_to_notebook"]
