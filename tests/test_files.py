"""A cache filled by one process is waited for by another, then read: computed once."""

from __future__ import annotations

import subprocess
import sys
import time

FILL = """
import sys, time
from pathlib import Path
from difftrain.files import filling
path, log = Path(sys.argv[1]), Path(sys.argv[2])
with filling(path):
    if not path.exists():
        time.sleep(2)  # a long computation
        path.write_text("computed")
        log.open("a").write("computed\\n")
"""


def test_two_processes_filling_one_cache_compute_it_once(tmp_path):
    cache, log = tmp_path / "cache" / "features.pt", tmp_path / "log.txt"
    fill = [sys.executable, "-c", FILL, str(cache), str(log)]
    first = subprocess.Popen(fill, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the first holds the lock and computes
    second = subprocess.run(fill, capture_output=True, text=True, timeout=60)
    assert first.wait(timeout=60) == 0 and second.returncode == 0, second.stderr
    assert log.read_text() == "computed\n"  # once: the second waited, then found it
    assert cache.read_text() == "computed"
