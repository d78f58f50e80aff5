"""scalekit from a plain Python script, as the README's 'In a script' shows it: with the
`if __name__ == "__main__":` guard it works; without it, the error says what to change
(worker processes import the script again) instead of multiprocessing's bootstrapping
message."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)

BODY = """
s = sk.cluster(workers=1, memory_limit="1GiB")
print("workers:", len(s.client.nthreads()))
s.close()
"""


def run_script(tmp_path, source: str) -> subprocess.CompletedProcess:
    path = tmp_path / "train.py"
    path.write_text(source)
    return subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=150)


def test_a_guarded_script_starts_a_cluster(tmp_path):
    source = "import scalekit as sk\n\nif __name__ == \"__main__\":\n" + textwrap.indent(
        BODY, "    ")
    done = run_script(tmp_path, source)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "workers: 1" in done.stdout


def test_an_unguarded_script_is_told_the_fix(tmp_path):
    done = run_script(tmp_path, "import scalekit as sk\n" + BODY)
    assert done.returncode != 0
    final = done.stderr.strip().splitlines()[-1]
    assert final.startswith("scalekit.errors.ClusterError")
    assert 'put that code under `if __name__ == "__main__":`' in final
    # the worker that imported the script said why, too, instead of only multiprocessing
    assert "sk.cluster() ran while a worker process was starting" in done.stderr
