"""SIGPROF stays ignored, so mediapipe's profiling timer cannot kill a process after a Lightning fit."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_machinery_ignores_sigprof() -> None:
    # an ignored disposition is inherited across exec: start the child from the default one
    code = ("import signal; signal.signal(signal.SIGPROF, signal.SIG_DFL); import avp.lit; "
            "assert signal.getsignal(signal.SIGPROF) == signal.SIG_IGN; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_an_installed_handler_is_kept() -> None:
    code = ("import signal; h = lambda *a: None; signal.signal(signal.SIGPROF, h); "
            "from avp.signals import ignore_profiling_signal; ignore_profiling_signal(); "
            "assert signal.getsignal(signal.SIGPROF) is h; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
