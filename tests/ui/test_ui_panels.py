"""What the panels and the sidebar leave on screen, as a person sees it in JupyterLab.

- a saved notebook reopened after its kernel is gone shows the panels' last state (static
  HTML), not "Error displaying widget: model not found";
- a worker killed mid-fit reads as one failure and one recovery: no red line per rank,
  nothing left saying "recovering" once the fit trains on;
- the sidebar and the status bar show a cluster made by ``sk.cluster()``.
"""

from __future__ import annotations

import os
from typing import Any

import nbformat
import pytest
from ui_harness import LabServer, Notebook, element_screenshot, screenshot, wait_until

pytestmark = pytest.mark.slow

CLUSTER_S = 120
SIDEBAR_TAB = ".jp-SideBar .lm-TabBar-tab[data-id='scalekit-sidebar']"
IMPORTS = """\
import os, signal, time
import numpy as np
import scalekit as sk
from skorch import NeuralNetClassifier
from torch import nn
from scalekit.events import EpochEnded, RankStatus
"""


def fit_code(epochs: int) -> str:
    """A small fit in the background whose panel is the cell's result."""
    return f"""\
# torch's own classes: the workers unpickle them by name
module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
rng = np.random.default_rng(0)
X = rng.normal(size=(4096, 16)).astype(np.float32)
y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
net = NeuralNetClassifier(module, criterion=nn.CrossEntropyLoss, lr=0.05, batch_size=32,
                          max_epochs={epochs}, train_split=None, verbose=0)
run = sk.fit(net, X, y, wait=False, show=False)
run.panel
"""


def write(server: LabServer, name: str, cells: list[str]) -> str:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, server.root / name)
    return name


def status_text(page: Any) -> str:
    item = page.locator(".sk-StatusItem")
    return item.inner_text() if item.count() and item.is_visible() else ""


@pytest.mark.timeout(600)
def test_a_reopened_notebook_shows_the_panels_last_state(open_notebook: Any,
                                                         lab_server: LabServer) -> None:
    from playwright.sync_api import expect

    name = write(lab_server, "reopen.ipynb", [
        IMPORTS,
        "session = sk.cluster(workers=2)\nsession.panel",
        fit_code(4),
        "run.wait()\nprint(run.status)",
        "session.close()",
    ])
    nb = open_notebook(lab_server, name)
    nb.run_all(timeout=CLUSTER_S + 240)
    expect(nb.output(3)).to_contain_text("finished")
    # over: both outputs became static HTML (no widget whose model dies with the kernel)
    expect(nb.output(1).locator(".scalekit-cluster")).to_contain_text("closed",
                                                                      timeout=30_000)
    expect(nb.output(1).locator(".scalekit-cluster-panel")).to_have_count(0)
    expect(nb.output(2).locator(".scalekit-training")).to_contain_text("finished")
    expect(nb.output(2).locator(".scalekit-training-panel")).to_have_count(0)
    nb.page.keyboard.press("Control+s")
    wait_until(lambda: not nb.page.locator(".jp-mod-dirty").count(), 30, "the save")
    assert not lab_server.delete_sessions()  # the kernel is gone, with its widget models

    again = open_notebook(lab_server, name)
    cluster, training = again.output(1), again.output(2)
    expect(cluster.locator(".scalekit-cluster")).to_contain_text(
        "scalekit cluster · local · closed")
    expect(training.locator(".scalekit-training")).to_contain_text("finished · 4 epochs")
    expect(training.locator("svg.scalekit-loss-chart")).to_be_visible()
    expect(training.locator("svg.scalekit-world-chart")).to_be_visible()
    assert "Error displaying widget" not in again.page.inner_text(".jp-NotebookPanel-notebook")
    screenshot(again.page, "reopened-notebook")


@pytest.mark.timeout(600)
def test_a_killed_worker_reads_as_one_failure_and_one_recovery(open_notebook: Any,
                                                               lab_server: LabServer) -> None:
    from playwright.sync_api import expect

    name = write(lab_server, "recovery.ipynb", [
        "%load_ext scalekit\n" + IMPORTS,
        "session = sk.cluster(workers=3)\nsession.wait_for_workers(3, timeout=120)",
        fit_code(40),
        # after two epochs, SIGKILL the worker process of rank 1; the fit recovers
        """\
deadline = time.time() + 240
while not any(isinstance(e, EpochEnded) and e.epoch >= 2 for e in run.events):
    assert time.time() < deadline and not run.done, run.status
    time.sleep(0.1)
victim = next(e.worker for e in run.events if isinstance(e, RankStatus) and e.rank == 1)
os.kill(session.client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
run.wait()
print(run.status, sum(type(e).__name__ == "Recovered" for e in run.events))
print([e.reason for e in run.events if type(e).__name__ == "Recovered"])  # if it fails
""",
    ])
    nb = open_notebook(lab_server, name)
    nb.run_all(timeout=CLUSTER_S + 420)
    expect(nb.output(3)).to_contain_text("finished 1")
    # the survivors' expected failures are no red tracebacks from their workers
    assert "Compute Failed" not in nb.output(3).text_content()

    panel = nb.output(2).locator(".scalekit-training")
    expect(panel).to_contain_text("finished · 40 epochs")
    # one failure and one recovery in the event list, no failure line left in red
    expect(panel.locator(".scalekit-timeline-failure")).to_have_count(1)
    expect(panel.locator(".scalekit-timeline-recovery")).to_have_count(1)
    expect(panel.locator(".scalekit-timeline-failure")).to_contain_text("rank 1 on ")
    expect(panel.locator(".scalekit-incident")).to_have_count(0)
    expect(panel.locator(".scalekit-recoveries-line")).to_contain_text("recoveries: 1")
    text = panel.text_content()
    assert "recovering" not in text and "rank 0 on" not in text and "rank 2 on" not in text
    element_screenshot(nb.page, panel, "training-panel-recovered")

    # the sidebar's run card: the recovery counted, nothing alarming left
    nb.page.locator(SIDEBAR_TAB).click()
    card = nb.page.locator(".sk-Sidebar .sk-run").first
    expect(card).to_contain_text("recoveries: 1 · downtime ")
    expect(card.locator(".sk-run-alert")).to_have_count(0)
    expect(nb.page.locator(".sk-Sidebar .sk-message")).not_to_contain_text("recovering")
    element_screenshot(nb.page, nb.page.locator(".sk-Sidebar"), "sidebar-after-recovery")


@pytest.mark.timeout(600)
def test_the_sidebar_shows_a_cluster_made_by_sk_cluster(open_notebook: Any,
                                                        lab_server: LabServer) -> None:
    from playwright.sync_api import expect

    name = write(lab_server, "api-cluster.ipynb", [
        "import scalekit as sk\nsession = sk.cluster(workers=1)\n"
        "session.wait_for_workers(1, timeout=120)",
    ])
    nb: Notebook = open_notebook(lab_server, name)
    nb.run_all(timeout=CLUSTER_S + 60)
    nb.page.wait_for_timeout(3000)  # a snapshot would be there by now (2 a second)
    without_load_ext = status_text(nb.page)

    index = nb.add_cell_at_end("%load_ext scalekit")
    nb.wait_cell_ran(index, timeout=60)
    wait_until(lambda: status_text(nb.page).startswith("⚙ 1 worker · CPU "), 60,
               "the status bar to show the API cluster")
    nb.page.locator(SIDEBAR_TAB).click()
    sidebar = nb.page.locator(".sk-Sidebar")
    expect(sidebar.locator(".sk-cluster-head")).to_contain_text("local · running")
    expect(sidebar.locator(".sk-worker")).to_have_count(1)
    element_screenshot(nb.page, sidebar, "sidebar-api-cluster")
    # tutorials 02/03 never load the extension: the session registers the bridge itself
    assert without_load_ext.startswith("⚙ 1 worker"), without_load_ext


OTHER_KERNEL = """\
import os, sys, time
import numpy as np
import scalekit as sk
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from torch import nn


class HoldWhileFileExists(Callback):  # defined here: it travels by value
    def __init__(self, path):
        self.path = path

    def on_epoch_begin(self, net, **kwargs):
        while len(net.history) > 1 and os.path.exists(self.path):  # in the second epoch
            time.sleep(0.1)


if __name__ == "__main__":
    address, hold = sys.argv[1:]
    session = sk.cluster(connect=address)
    module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2048, 16)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    net = NeuralNetClassifier(module, criterion=nn.CrossEntropyLoss, max_epochs=3,
                              train_split=None, verbose=0,
                              callbacks=[("hold", HoldWhileFileExists(hold))])
    run = sk.fit(net, X, y, show=False)
    print("RUN", run.run_id, run.status, flush=True)
    session.close()
"""


@pytest.mark.timeout(600)
def test_the_sidebar_lists_the_clusters_runs_not_only_the_kernels(
        open_notebook: Any, lab_server: LabServer, tmp_path: Any) -> None:
    import subprocess
    import sys

    from playwright.sync_api import expect

    name = write(lab_server, "cluster-runs.ipynb", [
        "import scalekit as sk\nsession = sk.cluster(workers=2)\n"
        "session.wait_for_workers(2, timeout=120)",
    ])
    nb: Notebook = open_notebook(lab_server, name)
    nb.run_all(timeout=CLUSTER_S + 60)
    address = lab_server.kernel_value(name, "session.scheduler_address")

    # another process (a colleague's kernel, a script) fits on the same cluster, held
    # once its first epoch is over until the test lets it go
    script, hold = tmp_path / "other_kernel.py", tmp_path / "hold"
    script.write_text(OTHER_KERNEL)
    hold.write_text("")
    other = subprocess.Popen([sys.executable, str(script), address, str(hold)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "SCALEKIT_OWNER": "ada@lab"})
    try:
        nb.page.locator(SIDEBAR_TAB).click()
        others = nb.page.locator(".sk-Sidebar .sk-cluster-runs")
        card = others.locator(".sk-run").first
        expect(card).to_contain_text("NeuralNetClassifier · from a kernel · by ada@lab",
                                     timeout=CLUSTER_S * 1000)
        expect(card.locator(".sk-badge")).to_have_text("running")
        # the card may first show the fit still in its first epoch: its end comes with a
        # later poll (every 2 s), however loaded the machine
        expect(card).to_contain_text("epoch 1/3", timeout=CLUSTER_S * 1000)
        run_id = card.get_attribute("data-run-id")
        expect(card).to_contain_text(f'follow it: sk.attach("{run_id}")')
        element_screenshot(nb.page, nb.page.locator(".sk-Sidebar"), "sidebar-cluster-runs")
        # the kernel's own list does not have it
        expect(nb.page.locator(".sk-Sidebar .sk-runs:not(.sk-cluster-runs)")).to_be_hidden()
        hold.unlink()
        out, _ = other.communicate(timeout=180)
        assert f"RUN {run_id} finished" in out, out[-3000:]
        expect(card.locator(".sk-badge")).to_have_text("finished", timeout=30_000)
        expect(card).to_contain_text("epoch 3/3")
    except AssertionError as failure:  # say what the other process said
        hold.unlink(missing_ok=True)
        try:
            out, _ = other.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            other.kill()
            out, _ = other.communicate()
        raise AssertionError(f"{failure}\nthe other process printed:\n{out[-3000:]}") from None
    finally:
        hold.unlink(missing_ok=True)
        if other.poll() is None:
            other.kill()
            other.wait(30)
