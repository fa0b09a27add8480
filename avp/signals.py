"""Process-wide signal hygiene shared by the face tools and the training machinery."""

from __future__ import annotations

import signal
import threading


def ignore_profiling_signal() -> None:
    """Make SIGPROF harmless (main thread only; an installed profiler's handler is kept).

    mediapipe's ``libmediapipe.so`` arms a per-thread CPU-profiling timer (SIGPROF every 10 ms) in its worker threads
    and sets SIGPROF to "ignore". Anything that later puts the default disposition back (Lightning's signal connector
    restores every handler as it was when a fit started) lets the next tick terminate the process ("Profiling timer
    expired", exit 155). Ignoring SIGPROF before mediapipe loads and before any fit starts makes the saved-and-restored
    state "ignore" in both orders.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGPROF) == signal.SIG_DFL:
        signal.signal(signal.SIGPROF, signal.SIG_IGN)
