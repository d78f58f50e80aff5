"""A real JupyterLab server, headless Chromium, and the actions a person does in them.

Used by the browser tests in this folder (``tests/ui``); follows the recipe verified on
this kind of machine (see the README's "Browser tests" section):

- :class:`LabServer` runs ``jupyter lab`` on ``127.0.0.1`` with every Jupyter, JupyterLab,
  IPython and Dask config directory pointed at a temporary folder, on copies of the
  tutorial notebooks (JupyterLab autosaves: the repository's notebooks stay untouched),
  and shuts it down together with every kernel and the kernels' worker processes. Its
  :meth:`~LabServer.kernel_value` asks a notebook's kernel for a value through the
  server's kernel API (e.g. where the current scalekit cluster's scheduler listens), so
  the tutorials carry no code for the tests.
- :class:`Notebook` opens a notebook in a Playwright page and runs its cells through the
  menus, as a person would, with waits on conditions (never fixed sleeps).
- :func:`wait_for_widget` waits for a widget to render and, when it does not, saves a
  screenshot and fails with :class:`WidgetNotRendered` naming the picture.

The JupyterLab extension the browser loads is *this checkout's* build
(``extensions/labextension``, made by ``npm run build:prod`` or the install) when there
is one: the server's own ``JUPYTER_PATH`` comes first in JupyterLab's search for
prebuilt extensions, so a link there wins over the copy installed in the virtual
environment, which is left untouched. ``SCALEKIT_UI_LABEXTENSION`` names another build;
``SCALEKIT_UI_LABEXTENSION=installed`` uses the installed one.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import nbformat
import psutil

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
LABEXTENSION = "scalekit-jupyterlab"
ARTIFACTS = Path(os.environ.get("SCALEKIT_UI_ARTIFACTS", ROOT / "artifacts" / "ui"))
DOC_SCREENSHOTS = ROOT / "docs" / "screenshots"

CHROMIUM = os.environ.get("SCALEKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1280, "height": 900}

WIDGET_MANAGER = "@jupyter-widgets/jupyterlab-manager"
# where the kernel's current scalekit cluster (the session registry's) has its scheduler
SCHEDULER_ADDRESS = "__import__('scalekit').current_session().scheduler_address"
ACTIVE_NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def artifact_path(name: str) -> Path:
    """``artifacts/ui/<name>`` (the folder is created); CI keeps this folder."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def labextension_build() -> Path | None:
    """The extension build the browser tests load: ``SCALEKIT_UI_LABEXTENSION``, else
    this checkout's ``extensions/labextension``; ``None``: the installed one."""
    asked = os.environ.get("SCALEKIT_UI_LABEXTENSION", "")
    if asked == "installed":
        return None
    build = Path(asked) if asked else ROOT / "extensions" / "labextension"
    return build if (build / "package.json").is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- the server ------------------------------------------------------------------------
class LabServer:
    """``jupyter lab`` on 127.0.0.1 with isolated config; see the module docstring.

    Parameters
    ----------
    base : Path
        An empty temporary folder: config dirs go in it, the notebooks are copied to
        ``base / "root"``, which is the server's root directory.
    name : str
        Names the server's log file, ``artifacts/ui/jupyterlab-<name>.log``.
    env : mapping
        Extra environment for the server; kernels inherit it.
    disabled_extensions : iterable of str
        Lab extensions to disable with ``jupyter labextension disable`` in this server's
        own config directory (e.g. the widget manager, to test a missing frontend).
    """

    def __init__(self, base: Path, *, name: str = "server", env: Mapping[str, str] = {},
                 disabled_extensions: Iterable[str] = ()) -> None:
        self.base = Path(base)
        self.name = name
        self.root = self.base / "root"
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.log_path = artifact_path(f"jupyterlab-{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None
        self.env = self._environment(dict(env))
        self._prepare(list(disabled_extensions))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JUPYTER", "IPYTHON", "DASK_", "PYTEST_"))}
        b = self.base
        env.update({
            "JUPYTER_CONFIG_DIR": str(b / "config"),
            "JUPYTER_DATA_DIR": str(b / "data"),
            "JUPYTER_RUNTIME_DIR": str(b / "runtime"),
            "JUPYTER_PATH": str(b / "share"),  # our python3 kernelspec wins
            "JUPYTERLAB_SETTINGS_DIR": str(b / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(b / "lab-workspaces"),
            "IPYTHONDIR": str(b / "ipython"),
            "DASK_CONFIG": str(b / "dask"),  # no user Dask config leaks into kernels
            "JUPYTER_PLATFORM_DIRS": "1",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def _prepare(self, disabled: list[str]) -> None:
        for sub in ("config", "data", "runtime", "ipython", "dask", "lab-workspaces"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        # a python3 kernel that is the interpreter running the tests (the project's venv)
        spec = self.base / "share" / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python",
        }))
        # no news, update checks or toasts over the screenshots
        notification = (self.base / "lab-settings" / "@jupyterlab" / "apputils-extension"
                        / "notification.jupyterlab-settings")
        notification.parent.mkdir(parents=True)
        notification.write_text(json.dumps({"fetchNews": "false", "doNotDisturbMode": True}))
        # this checkout's extension build, ahead of the one installed in the venv
        self.labextension = labextension_build()
        if self.labextension is not None:
            link = self.base / "share" / "labextensions" / LABEXTENSION
            link.parent.mkdir(parents=True)
            link.symlink_to(self.labextension.resolve(), target_is_directory=True)
        # copies of the tutorials: JupyterLab autosaves outputs into what it opens
        self.root.mkdir()
        for nb in NOTEBOOKS.glob("*.ipynb"):
            shutil.copy(nb, self.root / nb.name)
        for ext in disabled:
            subprocess.run(
                [sys.executable, "-m", "jupyterlab.labextensions", "disable", "--level=user",
                 ext],
                env=self.env, check=True, capture_output=True, timeout=120,
            )

    def start(self, timeout: float = 180) -> LabServer:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}",
             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.root}", "--ServerApp.port_retries=0",
             "--allow-root", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=self.root, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"jupyter lab exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                self.api("GET", "/api/status", timeout=5)
                return True
            except (OSError, urllib.error.URLError):
                return False

        wait_until(ready, timeout, f"jupyter lab to answer on {self.url}", interval=0.5)
        return self

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"token {self.token}",
                     "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
        return json.loads(text) if text else None

    def served_labextension(self) -> dict[str, Any]:
        """The scalekit extension as the running server serves it (its ``load`` path
        and the folder it comes from), read from the lab page's config."""
        request = urllib.request.Request(f"{self.url}/lab?token={self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            page = response.read().decode()
        found = re.search(r'<script id="jupyter-config-data" type="application/json">'
                          r"(.*?)</script>", page, re.S)
        assert found, "no page config in /lab"
        config = json.loads(found.group(1))
        for ext in config.get("federated_extensions", []):
            if ext.get("name") == LABEXTENSION:
                return ext
        raise AssertionError(f"{LABEXTENSION} is not among the server's extensions")

    def kernel_of(self, notebook: str) -> str:
        """The id of the kernel of the session that has ``notebook`` open."""
        for session in self.api("GET", "/api/sessions"):
            if Path(session.get("path") or "").name == notebook and session.get("kernel"):
                return str(session["kernel"]["id"])
        raise AssertionError(f"no kernel session for {notebook}")

    def kernel_value(self, notebook: str, expression: str, timeout: float = 60) -> Any:
        """Evaluate ``expression`` in the kernel of ``notebook`` and return its value.

        It goes to the kernel through the server's websocket as a silent execute request
        with a user expression, as another frontend would: the notebook shows nothing,
        and its history and execution count stay as they are. The value comes back as
        its ``repr``, read with :func:`ast.literal_eval` (strings, numbers, containers).
        """
        import websocket  # websocket-client, which jupyter_server depends on

        url = (f"ws://127.0.0.1:{self.port}/api/kernels/{self.kernel_of(notebook)}/channels"
               f"?token={self.token}")
        msg_id = uuid.uuid4().hex
        request = {
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "tests",
                       "session": uuid.uuid4().hex, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": "", "silent": True, "store_history": False,
                        "user_expressions": {"value": expression}, "allow_stdin": False,
                        "stop_on_error": False},
        }
        ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        try:
            ws.send(json.dumps(request))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                reply = json.loads(ws.recv())
                if (reply.get("channel") == "shell"
                        and reply.get("parent_header", {}).get("msg_id") == msg_id):
                    break
            else:
                raise AssertionError(f"no reply to {expression!r} within {timeout:g}s")
        finally:
            ws.close()
        value = reply["content"]["user_expressions"]["value"]
        if value.get("status") != "ok":
            raise AssertionError(f"{expression!r} failed in the kernel of {notebook}: "
                                 f"{value.get('ename')}: {value.get('evalue')}")
        return ast.literal_eval(value["data"]["text/plain"])

    def lab_url(self, notebook: str) -> str:
        return f"{self.url}/lab/tree/{notebook}?token={self.token}&reset"

    def descendants(self) -> list[psutil.Process]:
        """Live processes under the server: kernels and their Dask workers."""
        if self.proc is None:
            return []
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        return alive

    def delete_sessions(self, timeout: float = 60) -> list[str]:
        """Delete every session (its kernel shuts down, closing the clusters it started);
        return the command lines of processes that outlived ``timeout`` (then killed)."""
        for session in self.api("GET", "/api/sessions"):
            try:
                self.api("DELETE", f"/api/sessions/{session['id']}", timeout=timeout)
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
        for kernel in self.api("GET", "/api/kernels"):  # kernels without a session
            try:
                self.api("DELETE", f"/api/kernels/{kernel['id']}", timeout=timeout)
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
        try:
            wait_until(lambda: not self.descendants(), timeout,
                       "kernels and workers to exit")
            return []
        except AssertionError:
            left = self.descendants()
            names = []
            for p in left:
                try:
                    names.append(" ".join(p.cmdline())[:200])
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            return names

    def stop(self, timeout: float = 30) -> None:
        """Shut the server down (kernels too), then kill whatever is left of it."""
        if self.proc is None:
            return
        left = self.descendants()
        if self.proc.poll() is None:
            try:
                self.api("POST", "/api/shutdown", timeout=10)
                self.proc.wait(timeout)
            except (OSError, urllib.error.URLError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        _, alive = psutil.wait_procs(left, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self._log is not None:
            self._log.close()
        self.proc = None


# -- widgets ---------------------------------------------------------------------------
class WidgetNotRendered(AssertionError):
    """A widget did not appear in time; ``screenshot`` is the picture of the page."""

    def __init__(self, message: str, screenshot: Path) -> None:
        super().__init__(message)
        self.screenshot = screenshot


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80] or "page"


def screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot ``artifacts/ui/<name>.png``; returns its path."""
    path = artifact_path(f"{safe_name(name)}.png")
    page.screenshot(path=str(path), full_page=True)
    return path


def element_screenshot(page: Any, element: Any, name: str, docs: bool = False) -> Path:
    """A screenshot of one element, ``artifacts/ui/<name>.png``, whole even when it is
    taller than the window (the window grows for the picture, then shrinks back).

    With ``docs=True`` and ``SCALEKIT_UPDATE_SCREENSHOTS=1`` in the environment, the
    picture is also copied to ``docs/screenshots/`` (the README shows those).
    """
    size = page.viewport_size
    box = element.bounding_box()
    if box is not None and box["height"] + 250 > size["height"]:
        page.set_viewport_size({"width": size["width"],
                                "height": min(int(box["height"]) + 250, 4000)})
    try:
        element.scroll_into_view_if_needed()
        path = artifact_path(f"{safe_name(name)}.png")
        element.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
    if docs and os.environ.get("SCALEKIT_UPDATE_SCREENSHOTS") == "1":
        DOC_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOC_SCREENSHOTS / path.name)
    return path


def wait_for_widget(scope: Any, selector: str, *, page: Any, name: str,
                    timeout: float = 60) -> Any:
    """Wait until ``selector`` is visible inside ``scope`` (a page or a locator).

    On timeout: saves ``artifacts/ui/<name>-not-rendered.png`` and raises
    :class:`WidgetNotRendered` saying what the output shows instead.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    found = scope.locator(selector).first
    try:
        found.wait_for(state="visible", timeout=timeout * 1000)
        return found
    except PlaywrightTimeout:
        try:  # the picture should show where the widget was expected
            scope.scroll_into_view_if_needed(timeout=5000)
        except Exception:
            pass
        shot = screenshot(page, f"{name}-not-rendered")
        try:
            shown = " ".join(scope.inner_text(timeout=5000).split())[:300]
        except Exception:  # the scope itself may be what is missing
            shown = "(nothing)"
        raise WidgetNotRendered(
            f"widget {selector!r} did not render within {timeout:g}s "
            f"(is the ipywidgets frontend, {WIDGET_MANAGER}, installed and enabled?); "
            f"the output shows: {shown!r}; screenshot: {shot}",
            shot,
        ) from None


# -- notebooks -------------------------------------------------------------------------
def find_cell(notebook: str, needle: str, kind: str | None = None) -> int:
    """Index of the first cell of ``notebooks/<notebook>`` (of type ``kind``, e.g.
    ``"code"``) whose source contains ``needle``: tests find cells by content."""
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    for i, cell in enumerate(nb.cells):
        if needle in cell.source and kind in (None, cell.cell_type):
            return i
    raise AssertionError(f"{notebook}: no {kind or 'cell'} contains {needle!r}")


_CELLS_DONE_JS = """
([panel, index, before]) => {
  const cells = document.querySelectorAll(panel + ' .jp-Cell');
  if (cells.length <= index) return false;
  const prompts = [...document.querySelectorAll(panel + ' .jp-InputArea-prompt')];
  if (prompts.some(p => p.textContent.includes('[*]'))) return false;
  const own = cells[index].querySelector('.jp-InputArea-prompt');
  const text = own === null ? '' : own.textContent;
  if (/\\[\\d+\\]/.test(text) && text !== before) return 'ran';
  // a run that stopped on an exception leaves a traceback and the rest unrun
  const outputs = [...document.querySelectorAll(panel + ' .jp-OutputArea-output')];
  if (outputs.some(o => /Traceback|Cell In\\[\\d+\\]/.test(o.textContent))) return 'stopped';
  return false;
}
"""

_PROMPT_JS = """
([panel, index]) => {
  const cell = document.querySelectorAll(panel + ' .jp-Cell')[index];
  const prompt = cell ? cell.querySelector('.jp-InputArea-prompt') : null;
  return prompt ? prompt.textContent : '';
}
"""


class Notebook:
    """One notebook open in JupyterLab in a Playwright ``page``."""

    def __init__(self, page: Any, server: LabServer, name: str) -> None:
        self.page = page
        self.server = server
        self.name = name

    def open(self, timeout: float = 120) -> Notebook:
        self.page.goto(self.server.lab_url(self.name), timeout=timeout * 1000)
        self.page.locator(f"{ACTIVE_NOTEBOOK} .jp-Cell").first.wait_for(
            timeout=timeout * 1000)
        self.wait_kernel_idle(timeout)
        # fold the file browser away: more notebook on screen and in the screenshots
        current = self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
        if current.count():
            current.first.click()
            current.first.wait_for(state="detached")
        return self

    def wait_kernel_idle(self, timeout: float = 120) -> None:
        # the toolbar says idle before the kernel connects: the status bar does not
        self.page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(
            timeout=timeout * 1000)

    def cell(self, index: int) -> Any:
        return self.page.locator(f"{ACTIVE_NOTEBOOK} .jp-Cell").nth(index)

    def output(self, index: int) -> Any:
        return self.cell(index).locator(".jp-Cell-outputArea")

    def select(self, index: int) -> None:
        """Select a cell (command mode), as a click on its prompt area does."""
        cell = self.cell(index)
        cell.scroll_into_view_if_needed()
        cell.locator(".jp-InputPrompt").first.click()
        self.page.keyboard.press("Escape")

    def run_menu(self, command: str) -> None:
        """Click ``Run`` in the menu bar, then the item for ``command``."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        self.page.locator(f".lm-Menu-item[data-command='{command}']").click()

    def run_all(self, timeout: float) -> None:
        """"Run All Cells" from the Run menu; wait until the last code cell has run."""
        self._run(lambda: self.run_menu("runmenu:run-all"),
                  self._last_code_before(self.cell_count()), timeout)

    def run_all_above(self, index: int, timeout: float) -> None:
        """Run every cell above ``index`` ("Run All Above Selected Cell")."""
        self.select(index)
        self._run(lambda: self.run_menu("notebook:run-all-above"),
                  self._last_code_before(index), timeout)

    def run_from(self, index: int, timeout: float) -> None:
        """Run ``index`` and every cell below it ("Run Selected Cell and All Below")."""
        self.select(index)
        self._run(lambda: self.run_menu("notebook:run-all-below"),
                  self._last_code_before(self.cell_count()), timeout)

    def cell_count(self) -> int:
        return self.page.locator(f"{ACTIVE_NOTEBOOK} .jp-Cell").count()

    def _last_code_before(self, index: int) -> int:
        cells = self.page.locator(f"{ACTIVE_NOTEBOOK} .jp-Cell")
        for i in range(index - 1, -1, -1):
            if "jp-CodeCell" in (cells.nth(i).get_attribute("class") or ""):
                return i
        raise AssertionError(f"no code cell above cell {index}")

    def _run(self, start: Callable[[], None], last: int, timeout: float) -> None:
        before = self.page.evaluate(_PROMPT_JS, [ACTIVE_NOTEBOOK, last])
        start()
        self.wait_cell_ran(last, timeout, before=before)

    def wait_cell_ran(self, index: int, timeout: float, before: str = "") -> None:
        """Wait until no cell is running and code cell ``index`` shows an execution count
        other than ``before``; fail with the traceback shown if execution stopped."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(
                _CELLS_DONE_JS, arg=[ACTIVE_NOTEBOOK, index, before],
                timeout=timeout * 1000, polling=250,
            )
        except PlaywrightTimeout:
            raise AssertionError(
                f"{self.name}: cell {index} had not run after {timeout:g}s; error output: "
                f"{self.error_text()!r}; screenshot: {screenshot(self.page, self.name)}"
            ) from None
        outcome = self.page.evaluate(_CELLS_DONE_JS, [ACTIVE_NOTEBOOK, index, before])
        if outcome != "ran":
            raise AssertionError(
                f"{self.name}: execution stopped before cell {index}; error output: "
                f"{self.error_text()!r}; screenshot: {screenshot(self.page, self.name)}"
            )

    def error_text(self) -> str:
        """Text of the error outputs (tracebacks) shown in the notebook."""
        errors = self.page.locator(
            f"{ACTIVE_NOTEBOOK} .jp-OutputArea-output[data-mime-type="
            "'application/vnd.jupyter.stderr']")
        return "\n".join(errors.all_inner_texts())[-2000:]

    def add_cell_at_end(self, code: str) -> int:
        """Append a code cell (``B`` below the last cell), type ``code`` and run it with
        Shift+Enter; return its index. Nothing is saved to the repository's copy."""
        last = self.cell_count() - 1
        self.select(last)
        self.page.keyboard.press("b")
        index = last + 1
        wait_until(lambda: self.cell_count() > index, 30, "the new cell")
        editor = self.cell(index).locator(".cm-content")
        editor.click()
        self.page.keyboard.insert_text(code)
        self.page.keyboard.press("Shift+Enter")
        return index
