"""scalekit's JupyterLab extension (extensions/): status bar item and sidebar.

Three layers, each checked the way it is used:

- the TypeScript: ``npm run lint`` (prettier, ``tsc``) and the view-logic unit tests
  (vitest), in the node_modules the install's build left in ``extensions/``;
- the kernel protocol without a browser: a real ipykernel with ``%load_ext scalekit``,
  a client that reads the snapshot broadcasts from IOPub and opens a comm to the
  ``scalekit`` target as the extension does;
- the real thing: JupyterLab in headless Chromium (the fixtures of ``conftest.py``), a
  notebook that starts a cluster with ``%scalekit up --workers 2 --no-panel``, the status
  bar, the sidebar, scaling from the sidebar checked with a ``distributed.Client`` of
  our own, a fit's progress, adaptive on and off, and stopping the cluster.

``SCALEKIT_UPDATE_SCREENSHOTS=1`` also copies the sidebar's picture to
``docs/screenshots/jupyterlab-extension.png`` (docs/jupyterlab-extension.md shows it).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from ui_harness import (
    ROOT,
    SCHEDULER_ADDRESS,
    LabServer,
    Notebook,
    artifact_path,
    wait_until,
)

pytestmark = pytest.mark.slow

EXTENSION = ROOT / "extensions"
DOC_SCREENSHOT = ROOT / "docs" / "screenshots" / "jupyterlab-extension.png"
PROTOCOL = "scalekit/2"
CLUSTER_S = 120  # a cluster start or resize on a busy 2-core machine
STATUS = re.compile(r"⚙ (\d+) workers? · CPU \d+% · mem \d+\.\d(/\d+\.\d)? GiB")
SIDEBAR_TAB = ".jp-SideBar .lm-TabBar-tab[data-id='scalekit-sidebar']"


# --- the TypeScript -------------------------------------------------------------------


def npm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    if not (EXTENSION / "node_modules").is_dir():
        message = ("extensions/node_modules is missing: `make test` (pip install -e .) "
                   "installs it when it builds the extension")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    npm_exe = shutil.which("npm")
    assert npm_exe, "npm is needed to build and test the JupyterLab extension"
    # plain text whatever the terminal: CI sets FORCE_COLOR, which colours vitest's summary
    env = {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"}
    done = subprocess.run([npm_exe, *args], cwd=EXTENSION, capture_output=True, text=True,
                          timeout=timeout, env=env)
    done.stdout = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
    return done


@pytest.mark.timeout(600)
def test_typescript_lint_and_view_unit_tests() -> None:
    lint = npm("run", "lint")
    assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-3000:]
    tests = npm("test")
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    assert re.search(r"Tests\s+\d+ passed", tests.stdout), tests.stdout[-2000:]


def test_the_browser_tests_load_this_checkouts_build(lab_server: LabServer) -> None:
    """The UI tests check the extension as built from these sources, not whatever the
    virtual environment had installed (the venv is left untouched)."""
    from ui_harness import labextension_build

    build = labextension_build()
    if build is None:
        pytest.skip("no extensions/labextension build here: the installed one is used")
    served = lab_server.served_labextension()
    assert (build / served["load"]).is_file(), (served, build)


def test_the_prebuilt_extension_is_installed_where_jupyterlab_looks() -> None:
    import sys

    share = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "scalekit-jupyterlab"
    meta = json.loads((share / "package.json").read_text())
    assert meta["name"] == "scalekit-jupyterlab"
    assert (share / meta["jupyterlab"]["_build"]["load"]).is_file()
    assert json.loads((share / "install.json").read_text())["packageName"] == "scalekit"


# --- the kernel protocol, without a browser -------------------------------------------


class KernelClient:
    """A kernel and what the extension would read from it: snapshots and replies."""

    def __init__(self, kc: Any) -> None:
        self.kc = kc
        self.snapshots: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any]] = {}
        self.outputs: list[str] = []  # stdout, stderr, tracebacks: for failure messages
        self.stdout: list[str] = []
        self.idle: set[str] = set()  # requests whose outputs have all arrived

    def pump(self, until: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = until()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                     f"outputs: {self.outputs[-5:]}")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            self._record(msg)

    def _record(self, msg: dict[str, Any]) -> None:
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "status" and content["execution_state"] == "idle":
            self.idle.add(msg["parent_header"].get("msg_id", ""))
        elif kind == "stream":
            self.outputs.append(content["text"])
            if content["name"] == "stdout":
                self.stdout.append(content["text"])
        elif kind == "error":
            self.outputs.append("\n".join(content["traceback"]))
        elif kind == "comm_msg":
            data = content["data"]
            if data.get("protocol") == PROTOCOL and data.get("type") == "snapshot":
                data["_received"] = time.monotonic()
                self.snapshots.append(data)
            elif data.get("protocol") == PROTOCOL and data.get("type") == "reply":
                self.replies[data["request_id"]] = data

    def run(self, code: str, timeout: float = CLUSTER_S) -> None:
        msg_id = self.kc.execute(code)
        done: list[dict[str, Any]] = []

        def replied() -> bool:
            try:
                reply = self.kc.get_shell_msg(timeout=0.01)
            except queue.Empty:
                return False
            if reply["parent_header"].get("msg_id") == msg_id:
                done.append(reply)
            return bool(done)

        self.pump(replied, timeout, f"{code!r} to run")
        self.pump(lambda: msg_id in self.idle, 30, f"the outputs of {code!r}")
        assert done[0]["content"]["status"] == "ok", self.outputs[-3:]

    def comm_open(self, data: dict[str, Any]) -> str:
        comm_id = uuid.uuid4().hex
        msg = self.kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "scalekit",
                                                "data": data})
        self.kc.shell_channel.send(msg)
        return comm_id

    def comm_send(self, comm_id: str, data: dict[str, Any]) -> None:
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)

    def reply(self, request_id: str, timeout: float = CLUSTER_S) -> dict[str, Any]:
        return self.pump(lambda: self.replies.get(request_id), timeout,
                         f"the reply to {request_id}")

    def comm_info(self) -> dict[str, Any]:
        msg_id = self.kc.comm_info(target_name="scalekit")
        while True:
            reply = self.kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]["comms"]

    def last_cluster(self) -> dict[str, Any] | None:
        return self.snapshots[-1]["cluster"] if self.snapshots else None


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[KernelClient]:
    from jupyter_client.manager import start_new_kernel

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "PYTEST_"))}
    env["DASK_CONFIG"] = str(tmp_path / "dask")  # no user Dask config
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path),
                              startup_timeout=120)
    try:
        yield KernelClient(kc)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)  # %scalekit closes its cluster in do_shutdown


@pytest.mark.timeout(600)
def test_kernel_broadcasts_snapshots_and_takes_intents_on_its_comm(kernel) -> None:
    k = kernel
    # a kernel without scalekit: no snapshot, no comm to find
    k.run("x = 1")
    assert k.snapshots == [] and k.comm_info() == {}

    k.run("%load_ext scalekit\n%scalekit up --workers 2 --no-panel")
    k.pump(lambda: (k.last_cluster() or {}).get("n_workers") == 2, CLUSTER_S,
           "a snapshot of 2 workers")
    cluster = k.last_cluster()
    assert cluster["backend"] == "local" and cluster["status"] == "running"
    assert len(cluster["workers"]) == 2 and cluster["dashboard_link"].startswith("http")
    # the sidebar's words come made: the real machine's memory, singular counts
    view = cluster["view"]
    assert re.fullmatch(r"2 workers · CPU \d+% · mem \d+\.\d/\d+\.\d GiB", view["status_bar"])
    assert " of 2 threads · memory " in view["summary"]
    assert cluster["workers"][0]["view"]["title"].endswith(" · 1 thread")

    # snapshots flow while a cell runs, at most twice a second
    before = len(k.snapshots)
    k.run("import time; time.sleep(4)")
    during = k.snapshots[before:]
    assert len(during) >= 3, len(during)
    gaps = [b["time"] - a["time"] for a, b in zip(during, during[1:], strict=False)]
    assert min(gaps) >= 0.45, gaps
    assert len(during) <= 4 * 2 + 2

    # the extension opens its own comm once it has seen a snapshot; intents go there
    comm_id = k.comm_open({"action": "sync", "request_id": "hello"})
    assert k.reply("hello")["ok"] is True
    assert comm_id in k.comm_info()
    k.comm_send(comm_id, {"action": "scale", "n": 3, "request_id": "scale-3",
                          "cluster": cluster["id"]})
    reply = k.reply("scale-3")
    assert reply["ok"] is True and reply["message"] == "scaling to 3 workers"
    k.pump(lambda: (k.last_cluster() or {}).get("n_workers") == 3, CLUSTER_S,
           "a snapshot of 3 workers")
    k.run("import scalekit\nfrom scalekit.events import ScaleRequested\n"
          "s = scalekit.active_sessions()[-1]\n"
          "print(len(s.client.nthreads()), s.bus.latest(ScaleRequested).source)")
    assert k.stdout[-1].split() == ["3", "sidebar"]

    # a bad value is answered, and shows as the session's error notice
    k.comm_send(comm_id, {"action": "adapt", "minimum": 5, "maximum": 2, "request_id": "bad"})
    bad = k.reply("bad")
    assert bad["ok"] is False and "minimum" in bad["message"]
    k.pump(lambda: ((k.last_cluster() or {}).get("notice") or {}).get("level") == "error",
           10, "the error notice in a snapshot")
    k.comm_send(comm_id, {"action": "adapt", "minimum": 1, "maximum": 3, "request_id": "on"})
    assert k.reply("on")["ok"] is True
    k.pump(lambda: (k.last_cluster() or {}).get("adaptive") == {"minimum": 1, "maximum": 3},
           10, "adaptive 1..3 in a snapshot")
    k.comm_send(comm_id, {"action": "stop_adapt", "request_id": "off"})
    assert k.reply("off")["ok"] is True
    k.pump(lambda: (k.last_cluster() or {"adaptive": 0}).get("adaptive") is None, 10,
           "adaptive off in a snapshot")

    # stop: the session closes, the snapshot has no cluster
    k.comm_send(comm_id, {"action": "close", "request_id": "close"})
    assert k.reply("close")["ok"] is True
    k.pump(lambda: k.snapshots and k.snapshots[-1]["cluster"] is None, 30,
           "a snapshot without a cluster")
    k.run("print(len(scalekit.active_sessions()))")
    assert k.stdout[-1].strip() == "0"


# --- JupyterLab in Chromium ------------------------------------------------------------

NOTEBOOK = "labextension.ipynb"
FIT_CODE = """\
import numpy as np
from skorch import NeuralNetClassifier
from torch import nn

# torch's own classes: the workers unpickle them by name (no class of this notebook)
module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
rng = np.random.default_rng(0)
X = rng.normal(size=(4096, 16)).astype(np.float32)
y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
net = NeuralNetClassifier(module, criterion=nn.CrossEntropyLoss, lr=0.05, batch_size=32,
                          max_epochs=12, train_split=None, verbose=0)
run = scalekit.fit(net, X, y, wait=False, show=False)
"""


def write_notebook(server: LabServer) -> None:
    cells = [
        "%load_ext scalekit",
        "%scalekit up --workers 2 --no-panel",
        "import scalekit\n\nsession = scalekit.current_session()",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, server.root / NOTEBOOK)


def status_item(page: Any) -> Any:
    return page.locator(".sk-StatusItem")


def status_text(page: Any) -> str:
    item = status_item(page)
    return item.inner_text() if item.count() and item.is_visible() else ""


@pytest.fixture
def notebook(open_notebook: Any, lab_server: LabServer) -> Notebook:
    write_notebook(lab_server)
    return open_notebook(lab_server, NOTEBOOK)


@pytest.mark.timeout(900)
def test_status_bar_and_sidebar_show_and_steer_the_kernels_cluster(notebook: Notebook) -> None:
    from distributed import Client
    from playwright.sync_api import expect

    nb, page = notebook, notebook.page
    sidebar = page.locator(".sk-Sidebar")

    # a kernel without scalekit: no status item; the sidebar says how to start
    page.wait_for_timeout(1500)  # the comm_info probe has been answered by now
    assert status_text(page) == ""
    page.locator(SIDEBAR_TAB).click()
    expect(sidebar.locator(".sk-empty")).to_contain_text("%load_ext scalekit")
    page.locator(SIDEBAR_TAB).click()  # collapse it again

    nb.run_all(timeout=CLUSTER_S + 60)

    # status bar: workers, CPU, memory
    wait_until(lambda: STATUS.fullmatch(status_text(page)), 60, "the status bar item")
    assert STATUS.fullmatch(status_text(page)).group(1) == "2"

    # a click on it opens the sidebar: backend, workers with bars, dashboard link
    status_item(page).click()
    expect(sidebar).to_be_visible()
    expect(sidebar.locator(".sk-kernel-name")).to_contain_text(NOTEBOOK)
    expect(sidebar.locator(".sk-cluster-head")).to_contain_text("local · running")
    expect(sidebar.locator(".sk-worker")).to_have_count(2)
    expect(sidebar.locator(".sk-worker .sk-bar-cpu")).to_have_count(2)
    expect(sidebar.locator(".sk-worker .sk-bar-memory")).to_have_count(2)
    href = sidebar.locator("a.sk-dashboard").get_attribute("href")
    assert href and href.startswith("http") and "/status" in href

    address = nb.server.kernel_value(NOTEBOOK, SCHEDULER_ADDRESS)  # asked of the kernel
    assert address.startswith("tcp://127.0.0.1:"), address
    client = Client(address, timeout=60)
    try:
        # scale from the sidebar; the scheduler gets a third worker
        sidebar.locator(".sk-scale-input").fill("3")
        sidebar.locator(".sk-scale-button").click()
        wait_until(lambda: len(client.nthreads()) == 3, CLUSTER_S,
                   "3 workers on the scheduler", interval=0.5)
        expect(sidebar.locator(".sk-worker")).to_have_count(3, timeout=30_000)
        # "scaling to 3 workers" said what was under way: gone once they are there
        expect(sidebar.locator(".sk-message")).to_have_text("", timeout=30_000)
        # bar labels off the fill: beside the bar, or under it when the sidebar is narrow
        for wrap in sidebar.locator(".sk-worker .sk-bar-wrap").all():
            bar = wrap.locator(".sk-bar").bounding_box()
            label = wrap.locator(".sk-bar-label").bounding_box()
            assert bar and label, "bars not laid out"
            beside = label["x"] >= bar["x"] + bar["width"]
            under = label["y"] >= bar["y"] + bar["height"]
            assert beside or under, (bar, label)
        wait_until(lambda: status_text(page).startswith("⚙ 3 workers"), 30,
                   "the status bar to say 3 workers")

        # a fit: the status bar adds epoch and loss while it runs; the sidebar lists it
        index = nb.add_cell_at_end(FIT_CODE)
        nb.wait_cell_ran(index, timeout=CLUSTER_S)
        wait_until(lambda: re.search(r" · epoch \d+/12 · loss [\d.e+-]+$", status_text(page)),
                   240, "epoch and loss in the status bar")
        run = sidebar.locator(".sk-run").first
        expect(run.locator(".sk-badge")).to_have_text("running")
        expect(run).to_contain_text("world size", timeout=60_000)
        expect(run).to_contain_text("last checkpoint: after epoch", timeout=60_000)
        # measured by the kernel over recent steps, said so, thousands separated
        expect(run).to_contain_text(
            re.compile(r"(\d{1,3}(,\d{3})*|–) samples/s \((last \d+ s|measuring)\)"))
        try:  # for the picture: a measured figure (the fit may be over first)
            expect(run).to_contain_text(re.compile(r"\d samples/s \(last \d+ s\)"),
                                        timeout=20_000)
        except AssertionError:
            pass
        shot = artifact_path("jupyterlab-extension.png")
        page.screenshot(path=str(shot))
        expect(run.locator(".sk-badge")).to_have_text("finished", timeout=300_000)
        expect(run.locator(".sk-run-headline")).to_contain_text("epoch 12/12 · loss")
        expect(run).to_contain_text("last checkpoint: after epoch 12")
        expect(run).to_contain_text("no recoveries")
        expect(run).to_contain_text(re.compile(
            r"\d{1,3}(,\d{3})* samples/s over the whole run \(start-up included\)"))
        expect(run.locator(".sk-run-alert")).to_have_count(0)
        wait_until(lambda: "epoch" not in status_text(page), 30,
                   "the status bar to drop the finished fit")

        # a value the kernel would refuse is caught in the sidebar
        sidebar.locator(".sk-scale-input").fill("0")
        sidebar.locator(".sk-scale-button").click()
        expect(sidebar.locator(".sk-message")).to_contain_text("workers: choose 1..")
        assert len(client.nthreads()) == 3

        # adaptive on and off from the sidebar
        sidebar.locator(".sk-adapt-min").fill("1")
        sidebar.locator(".sk-adapt-max").fill("3")
        sidebar.locator(".sk-adapt-button").click()
        expect(sidebar.locator(".sk-summary")).to_contain_text("adaptive 1..3",
                                                               timeout=30_000)
        sidebar.locator(".sk-stop-adapt-button").click()
        expect(sidebar.locator(".sk-summary")).not_to_contain_text("adaptive",
                                                                   timeout=30_000)

        # the kernel side saw the sidebar's intents as the session's own calls
        index = nb.add_cell_at_end(
            "from scalekit.events import AdaptChanged, ScaleRequested\n"
            "print(session.bus.latest(ScaleRequested).source, "
            "session.bus.latest(AdaptChanged).source, session.backend.adaptive)")
        nb.wait_cell_ran(index, timeout=60)
        expect(nb.output(index)).to_contain_text("sidebar sidebar None")

        # stop, with a second click to confirm: the cluster closes
        sidebar.locator(".sk-close-button").click()
        expect(sidebar.locator(".sk-close-button")).to_have_text("Click again to stop")
        sidebar.locator(".sk-close-button").click()
        expect(sidebar.locator(".sk-empty")).to_contain_text("No cluster is running",
                                                             timeout=60_000)
        wait_until(lambda: status_text(page) == "", 30, "the status bar item to go")
        expect(sidebar.locator(".sk-run")).to_have_count(1)  # past runs stay listed
    finally:
        client.close()

    index = nb.add_cell_at_end("print(len(scalekit.active_sessions()), session.closed)")
    nb.wait_cell_ran(index, timeout=60)
    expect(nb.output(index)).to_contain_text("0 True")

    if os.environ.get("SCALEKIT_UPDATE_SCREENSHOTS") == "1":
        DOC_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, DOC_SCREENSHOT)
