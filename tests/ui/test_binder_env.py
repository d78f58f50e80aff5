"""Binder: the ``binder/`` folder alone builds an environment that runs the quickstart.

repo2docker (what mybinder.org runs) installs Python from ``binder/runtime.txt``, runs
``pip install -r binder/requirements.txt``, then ``binder/postBuild``, and starts every
command through ``binder/start``. The slow tests here do the same with ``python -m venv``
and pip in a temporary folder, on a copy of the repository's files, then:

- execute the quickstart in it with nbclient (through ``bench/peak_memory.py``, which
  also measures the peak memory of the kernel and its workers against Binder's 2 GB), as
  under JupyterHub (``JUPYTERHUB_SERVICE_PREFIX`` set), and check that the dashboard link
  goes through jupyter-server-proxy;
- start a Jupyter server of that environment under the same prefix and fetch a Dask
  dashboard through the link Dask made.

Only two things differ from mybinder.org, because this machine cannot reach PyTorch's own
index: the ``--extra-index-url`` line is left out of the requirements used here, and torch
is pinned to the version in ``constraints.txt``, which the machine's local wheel provides
(see pip's config: ``pip config list``). ``binder/requirements.txt`` itself is unchanged.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml
from ui_harness import ROOT, artifact_path, free_port, wait_until

BINDER = ROOT / "binder"
PREFIX = "/user/binder-test/"  # what JupyterHub puts in JUPYTERHUB_SERVICE_PREFIX
BINDER_RAM_MIB = 2048
SERVER_ALLOWANCE_MIB = 250  # the Jupyter server and the browser's session in it
UNREACHABLE_INDEX = "download.pytorch.org"


# -- the conventions (fast) -------------------------------------------------------------
def test_binder_folder_follows_repo2docker_conventions() -> None:
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    requirements = (BINDER / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    for needed in ("torch", "jupyterlab", "ipywidgets", "dask[distributed]", "bokeh",
                   "jupyter-server-proxy", "skorch"):
        assert re.search(rf"^{re.escape(needed)}(?![\w.-])", requirements, re.M), needed
    for script in ("postBuild", "start"):
        path = BINDER / script
        assert os.access(path, os.X_OK), f"binder/{script} must be executable"
        assert path.read_text().startswith("#!/bin/bash\n")
    assert re.search(r"^set -e", (BINDER / "postBuild").read_text(), re.M)
    assert (BINDER / "start").read_text().rstrip().endswith('exec "$@"')
    config = yaml.safe_load((BINDER / "dask-dashboard.yaml").read_text())
    assert config["distributed"]["dashboard"]["link"] == (
        "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status")
    assert "binder/dask-dashboard.yaml" in (BINDER / "postBuild").read_text()


# -- a fresh environment built from binder/ (slow) -------------------------------------
@dataclass
class BinderEnv:
    repo: Path
    venv: Path
    env: dict[str, str]

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def run(self, *cmd: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` through binder/start in the repository copy, as repo2docker does."""
        result = subprocess.run(
            ["binder/start", *cmd], cwd=self.repo, env={**self.env, **env}, text=True,
            capture_output=True, timeout=timeout,
        )
        assert result.returncode == 0, (
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-3000:]}")
        return result


def _runtime_python() -> str:
    version = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        pytest.skip(f"binder/runtime.txt asks for Python {version}, not installed here")
    return found


def _copy_repository(dest: Path) -> None:
    """The files a clone would have (tracked, and new files that are not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def binder_env(tmp_path_factory: pytest.TempPathFactory) -> BinderEnv:
    base = tmp_path_factory.mktemp("binder")
    repo, home, venv = base / "repo", base / "home", base / "venv"
    repo.mkdir()
    home.mkdir()
    _copy_repository(repo)
    subprocess.run([_runtime_python(), "-m", "venv", str(venv)], check=True, timeout=300)

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER", "DASK_", "PYTHON", "VIRTUAL_ENV", "PYTEST_",
                                "SCALEKIT_"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               VIRTUAL_ENV=str(venv), HOME=str(home),
               # pip's cache stays where it was: HOME is the image user's, not pip's
               PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR",
                                            str(Path.home() / ".cache" / "pip")))

    # binder/requirements.txt less the index this machine cannot reach; torch pinned
    # to the version the local CPU wheel provides
    requirements = base / "requirements-here.txt"
    requirements.write_text("".join(
        line for line in (repo / "binder" / "requirements.txt").read_text().splitlines(True)
        if UNREACHABLE_INDEX not in line))
    torch_pin = re.search(r"^torch==\S+", (ROOT / "constraints.txt").read_text(), re.M)
    pins = base / "torch-here.txt"
    pins.write_text((torch_pin.group(0) if torch_pin else "") + "\n")

    log = artifact_path("binder-env-build.log")
    with open(log, "w") as out:
        for cmd in (
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
             "--no-compile",  # quicker; nothing else changes
             "-r", str(requirements), "-c", str(pins)],
            ["binder/postBuild"],
        ):
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            result = subprocess.run(cmd, cwd=repo, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=1500)
            assert result.returncode == 0, f"{cmd[-1]} failed: see {log}"
    return BinderEnv(repo=repo, venv=venv, env=env)


@pytest.fixture(scope="module")
def quickstart_in_binder(binder_env: BinderEnv, tmp_path_factory: pytest.TempPathFactory
                         ) -> tuple[nbformat.NotebookNode, dict]:
    """The quickstart executed in the Binder environment, and its peak memory."""
    out = tmp_path_factory.mktemp("binder-run")
    binder_env.run(
        binder_env.python, "bench/peak_memory.py", "notebooks/01_quickstart.ipynb",
        "--json", str(out / "peak.json"), "--executed-dir", str(out),
        timeout=900, JUPYTERHUB_SERVICE_PREFIX=PREFIX,
    )
    (peak,) = json.loads((out / "peak.json").read_text())
    shutil.copy(out / "peak.json", artifact_path("binder-quickstart-peak-memory.json"))
    nb = nbformat.read(out / "01_quickstart.ipynb", as_version=4)
    # the outputs as each cell left them (the panels turn static once the cluster closes)
    for index, outputs in json.loads((out / "01_quickstart.as-executed.json").read_text()).items():
        nb.cells[int(index)].setdefault("metadata", {})["as_executed"] = outputs
    return nb, peak


def _text(nb: nbformat.NotebookNode, needle: str, mime: str = "text/plain",
          as_executed: bool = False) -> str:
    """Everything the first code cell containing ``needle`` showed, as one string: in the
    saved notebook, or (``as_executed``) right after the cell ran."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)
    parts = []
    outputs = cell.metadata["as_executed"] if as_executed else cell.outputs
    for out in map(nbformat.from_dict, outputs):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(str(out.data.get(mime, "")))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_quickstart_runs_in_a_fresh_binder_environment(quickstart_in_binder) -> None:
    nb, peak = quickstart_in_binder
    assert peak["ok"], peak["error"]
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    # the dashboard link Dask makes goes through jupyter-server-proxy under the prefix
    assert re.search(rf"dashboard: {re.escape(PREFIX)}proxy/\d+/status",
                     _text(nb, "session.dashboard_link")), _text(nb, "session.dashboard_link")
    # kernel + workers within Binder's 2 GB, leaving room for the Jupyter server
    assert peak["peak_pss_mib"] < BINDER_RAM_MIB - SERVER_ALLOWANCE_MIB, peak


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_panel_links_the_dashboard_through_the_proxy(quickstart_in_binder) -> None:
    nb, _ = quickstart_in_binder
    # while the cluster runs; once the notebook closes it, the panel's last state is static
    # and says it closed, with no link to a dashboard that is gone
    html = _text(nb, "%scalekit up", mime="text/html", as_executed=True)
    assert re.search(rf'href="{re.escape(PREFIX)}proxy/\d+/status"', html), html
    closed = _text(nb, "%scalekit up", mime="text/html")
    assert "closed" in closed and "proxy/" not in closed, closed


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_dashboard_link_is_served_by_jupyter_server_proxy(binder_env: BinderEnv,
                                                          tmp_path: Path) -> None:
    """A Jupyter server of the Binder environment under a hub-like prefix serves the
    Dask dashboard at the very link Dask makes there."""
    token, port = secrets.token_hex(16), free_port()
    env = {**binder_env.env, "JUPYTERHUB_SERVICE_PREFIX": PREFIX,
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    log = open(artifact_path("binder-jupyter-server.log"), "wb")
    server = subprocess.Popen(
        ["binder/start", str(binder_env.venv / "bin" / "jupyter"), "server", "--no-browser",
         f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.base_url={PREFIX}",
         f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0", "--allow-root"],
        cwd=binder_env.repo, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster = subprocess.Popen(
        ["binder/start", binder_env.python, "-c",
         "import sys\n"
         "from distributed import LocalCluster\n"
         "with LocalCluster(n_workers=1, processes=False,"
         " dashboard_address='127.0.0.1:0') as c:\n"
         "    print(c.dashboard_link, flush=True)\n"
         "    sys.stdin.read()\n"],
        cwd=binder_env.repo, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        link = cluster.stdout.readline().strip()
        assert re.fullmatch(rf"{re.escape(PREFIX)}proxy/\d+/status", link), link

        def get(path: str) -> tuple[int, str]:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                             headers={"Authorization": f"token {token}"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, response.read().decode(errors="replace")
            except OSError:
                return 0, ""

        wait_until(lambda: get(f"{PREFIX}api/status")[0] == 200, 120,
                   "the Binder environment's Jupyter server")
        status, body = get(link)
        assert status == 200, f"GET {link} through the proxy: {status}"
        assert "Dask" in body and "bokeh" in body.lower(), body[:500]
    finally:
        cluster.stdin.close()
        for proc in (cluster, server):
            try:
                proc.wait(timeout=30 if proc is cluster else 1)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
        log.close()
