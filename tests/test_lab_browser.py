"""JupyterLab in a real browser, as a reader meets it: the Lab started the README's way
(`python3 compendium.py lab`), headless Chromium driven over the DevTools protocol (websocket-client,
already a dependency of jupyter_server), the 07 notebook run from the Lab, the rating form filled in
and submitted by mouse clicks. Checks that the answer lands in the ratings file stage 07 reads, that
running and saving the notebook leave `dvc status` clean, and that the new rating is what makes
07_readers stale (and what it then analyses).

Stage 07 reads 01_drr's and 05_restore's outputs; without them it rates phantoms (its documented
fallback), so the project copy gets empty upstream outputs and stage 07 is reproduced alone
(`dvc repro -s`, `dvc status 07_readers`): the test takes about a minute, not a pipeline run.
Skips where no Chromium is installed (CI installs Debian's `chromium`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from xrlib import stages
from xrlib.drr.truth import NODULE_COLUMNS
from xrlib.readerstudy import load_ratings_folder

BIN = Path(sys.executable).parent
CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None)
READER = "lab-reader"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium; .ci/run does)"),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(args, cwd, env, timeout=300):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _wait(what: str, check, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, websocket_url: str):
        import websocket

        self.socket = websocket.create_connection(websocket_url, timeout=120, suppress_origin=True)
        self.counter = 0

    def call(self, method: str, **params):
        self.counter += 1
        self.socket.send(json.dumps({"id": self.counter, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.counter:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str, await_promise: bool = False):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector_js: str) -> None:
        """A real mouse click at the centre of the element ``selector_js`` evaluates to."""
        box = self.js(f"(() => {{ const e = {selector_js}; if (!e) return null; e.scrollIntoView({{block: 'center'}});"
                      "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        assert box, f"nothing to click: {selector_js}"
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        self.socket.close()


NOTEBOOK_PANEL = ("(typeof jupyterapp === 'undefined' ? undefined : Array.from(jupyterapp.shell.widgets('main'))"
                  ".find(w => w.context && w.context.path === 'notebooks/07_readers.ipynb'))")
SAVE = f"(async () => {{ const p = {NOTEBOOK_PANEL}; await p.context.save(); return p.context.model.dirty; }})()"
"""What File > Save and autosave do (the notebook's document context saves through the contents API);
a headless page has no focused tab for the `docmanager:save` command to act on."""
OUTPUT_JS = "document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)')"


def _stop(process: subprocess.Popen) -> None:
    """End a process this test started, with the children of its session (kernels, renderers)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture()
def project(project_root, tmp_path):
    """A git copy of the working tree with stage 07 reproduced alone (upstream outputs empty)."""
    copy = tmp_path / "compendium"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(copy),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               XRLIB_PROGRESS="off", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"))
    env.pop("XRLIB_ROOT", None)  # the project root is found from where the Lab and the notebook run
    for name in filter(None, _run(["git", "ls-files", "-co", "--exclude-standard"], project_root, env).split("\n")):
        if (project_root / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project_root / name, copy / name)
    _run(["git", "init", "-q"], copy, env)
    _run(["git", "add", "-A"], copy, env)
    _run(["git", "commit", "-qm", "copy"], copy, env)
    _run([BIN / "xrlib", "notebooks", "--sync"], copy, env)  # as `compendium.py lab` does first
    for folder in ("outputs/01_drr/drr", "outputs/01_drr/drr_nodule_free", "outputs/05_restore"):
        (copy / folder).mkdir(parents=True)
    (copy / "outputs/01_drr/nodules.csv").write_text(",".join(NODULE_COLUMNS) + "\n")
    _run([BIN / "dvc", "repro", "--single-item", "07_readers"], copy, env, timeout=600)
    assert _status(copy, env) == {}
    return copy, env


def _status(copy: Path, env) -> dict:
    return json.loads(_run([BIN / "dvc", "status", "--json", "07_readers"], copy, env) or "{}")


@pytest.fixture()
def lab(project, tmp_path):
    """`python3 compendium.py lab` (environment used as it is) on a free port, stopped afterwards."""
    copy, env = project
    port, token = _free_port(), "browser-test"
    log = open(tmp_path / "lab.log", "w")
    process = subprocess.Popen(
        [sys.executable, "compendium.py", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.token={token}", "--LabApp.expose_app_in_browser=True",
         *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI runs as root
        cwd=copy, env=dict(env, XRLIB_NO_SETUP="1", XRLIB_VENV=sys.prefix), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)

    def ready():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2):
                return True
        except OSError:
            assert process.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
            return False

    try:
        _wait("the Lab to answer", ready, 120)
        yield f"http://127.0.0.1:{port}", token, tmp_path / "lab.log"
    finally:
        _stop(process)
        log.close()


@pytest.fixture()
def browser(lab, tmp_path):
    base, token, _ = lab
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--remote-debugging-port=0", "--remote-allow-origins=*",
         f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port = _wait("Chromium's DevTools port", lambda: (profile / "DevToolsActivePort").is_file()
                     and (profile / "DevToolsActivePort").read_text().split("\n")[0], 60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        devtools.call("Page.enable")
        devtools.call("Page.navigate", url=f"{base}/lab/tree/notebooks/07_readers.ipynb?reset&token={token}")
        yield devtools
        devtools.close()
    finally:
        _stop(process)


def test_rating_in_the_lab_lands_in_the_ratings_file_and_leaves_the_pipeline_clean(project, browser, tmp_path):
    copy, env = project
    devtools = browser
    source = copy / "notebooks" / "07_readers.py"
    source_md5 = _md5(source)
    started = time.monotonic()

    # the Lab opens the notebook; run every cell from the Lab once its kernel is up
    _wait("the notebook and its kernel", lambda: devtools.js(
        f"(() => {{ const p = {NOTEBOOK_PANEL}; return !!(p && p.sessionContext.session && p.sessionContext.session.kernel"
        " && p.sessionContext.session.kernel.status === 'idle'); })()"), 120)
    devtools.js("jupyterapp.commands.execute('notebook:run-all-cells')", await_promise=True)
    code_cells = (f"{NOTEBOOK_PANEL}.content.widgets.filter(c => c.model.type === 'code')")
    _wait("every cell to run", lambda: devtools.js(
        f"(() => {{ const p = {NOTEBOOK_PANEL}; return p.sessionContext.session.kernel.status === 'idle' &&"
        f" {code_cells}.every(c => c.model.executionCount); }})()"), 180)
    errors = devtools.js(f"{code_cells}.flatMap(c => c.model.outputs.toJSON()).filter(o => o.output_type === 'error')"
                         ".map(o => o.ename + ': ' + o.evalue)")
    assert errors == [], errors
    assert devtools.js(f"{OUTPUT_JS}.querySelectorAll('.jp-OutputArea-output img').length") >= 1  # figures inline
    devtools.js(SAVE, await_promise=True)
    assert _md5(source) == source_md5, "running and saving in the Lab changed the stage's notebook"
    assert not (copy / "notebooks" / "ratings").exists()
    assert _status(copy, env) == {}, "running 07 in the Lab made it stale"

    # the rating form: type a name, Start, answer by clicking, Submit
    form = f"{OUTPUT_JS}.querySelector('.widget-text input')"
    _wait("the rating form", lambda: devtools.js(f"!!{form}"), 60)
    devtools.click(form)
    devtools.call("Input.insertText", text=READER)
    devtools.click(f"Array.from({OUTPUT_JS}.querySelectorAll('button')).find(b => b.textContent.trim() === 'Start')")
    yes_buttons = (f"Array.from({OUTPUT_JS}.querySelectorAll('.widget-toggle-buttons button'))"
                   ".filter(b => b.textContent.trim() === 'yes')")
    _wait("the first case", lambda: devtools.js(f"{yes_buttons}.length") == 4, 60)
    page_text = devtools.js(f"{OUTPUT_JS}.innerText")
    assert "case 1 of" in page_text and "vs the reference" not in page_text  # no reference in this deck: no panel
    assert devtools.js(f"{OUTPUT_JS}.querySelectorAll('.widget-image').length") >= 1
    for index in range(4):
        devtools.click(f"{yes_buttons}[{index}]")
    devtools.click(f"Array.from({OUTPUT_JS}.querySelectorAll('button')).find(b => b.textContent.includes('Submit'))")
    ratings = copy / "ratings" / f"{READER}.csv"
    _wait("the answer in ratings/", lambda: ratings.is_file() and len(ratings.read_text().splitlines()) == 2, 60)
    _wait("the next case", lambda: "case 2 of" in devtools.js(f"{OUTPUT_JS}.innerText"), 30)
    row = ratings.read_text().splitlines()[1].split(",")
    assert row[0] == READER and row[4:8] == ["1", "1", "1", "1"], row
    shot = devtools.call("Page.captureScreenshot", format="png")["data"]  # kept beside the Lab's log
    (tmp_path / "lab-rating.png").write_bytes(base64.b64decode(shot))
    devtools.js(SAVE, await_promise=True)
    assert _md5(source) == source_md5
    lab_seconds = time.monotonic() - started

    # the rating is the only change: it makes 07_readers (alone) stale, and 07 reads it as a good rating
    assert _status(copy, env) == {"07_readers": [{"changed deps": {"ratings": "modified"}}]}
    shutil.copy2(copy / "outputs/07_readers/deck/key.csv", copy / "ratings" / "key.csv")
    good, problems, _ = load_ratings_folder(stages.path("ratings", copy))
    assert len(good) == 1 and problems.empty and good["reader"].tolist() == [READER]
    print(f"Lab session (open, run all, save, rate): {lab_seconds:.0f} s")
