"""Preloaded into every local worker process (``Nanny(preload=...)``).

"Interrupt kernel" sends SIGINT to the kernel's whole process group, and local worker
processes are in it: without this they would all die with the interrupted cell. The
kernel itself still gets the KeyboardInterrupt; the workers keep running.
"""

import signal
import threading

if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
