"""The workbook in a real browser: JupyterLab, chromium (Debian's, driven by Playwright), chapter 12.

JupyterLab is started on 127.0.0.1 with a token, on a *copy* of ``notebooks/`` (JupyterLab saves
what it runs; the tests leave no trace). The test runs every cell of ``12_playground.ipynb``,
types a line into the playground, presses Generate, and checks the ``<audio>`` element that
appears: it decodes, it is not silent, its length is the duration the playground reports, and
it plays. The screenshot goes to ``outputs.figures_dir()`` (a scratch folder under test; ``make
screenshot`` refreshes the committed ``figures/12_playground.png``). A second test opens chapter 07b,
runs the cells its clip picker needs, chooses the generated held-out turn and plays it.

``.ci/run`` installs Debian's ``chromium``; no browser is downloaded. Without chromium (and outside
CI) the test is skipped; in CI (``CI=true``) a missing browser fails it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from csm_lib import outputs
from csm_lib.serve.cli import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LINE = "the garden looks lovely in the morning light"

if CHROMIUM is None and os.environ.get("CI") != "true":
    pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it", allow_module_level=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a copy of notebooks/ -> its base URL and token."""
    work = tmp_path_factory.mktemp("lab") / "notebooks"
    shutil.copytree(outputs.REPO / "notebooks", work, ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints"))
    (work.parent / "checkpoints").symlink_to(outputs.REPO / "checkpoints")  # ../checkpoints, read only
    shutil.copytree(outputs.REPO / "results", work.parent / "results")  # ../results, a copy
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "CSM_PROGRESS": "0",  # CSM_OUTPUT_DIR (a scratch folder under test) is inherited
           "JUPYTER_CONFIG_DIR": str(work.parent / "config"), "JUPYTER_RUNTIME_DIR": str(work.parent / "runtime")}
    settings = work.parent / "config" / "lab" / "user-settings"
    for plugin, value in (("@jupyterlab/notebook-extension/tracker", {"windowingMode": "none"}),  # all cells in the DOM
                          ("@jupyterlab/apputils-extension/notification", {"fetchNews": "false"})):
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    log = open(work.parent / "lab.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
                             f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
                             "--LabApp.expose_app_in_browser=True", "--allow-root"],
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/api/status", params={"token": token}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (work.parent / "lab.log").read_text()[-2000:]
            time.sleep(0.2)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


KERNEL_IDLE = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const kernel = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle';
}"""


COUNTS = """() => window.jupyterapp.shell.currentWidget.content.widgets
    .filter(c => c.model.type === 'code').map(c => c.model.executionCount)"""


def open_notebook(page, url: str, token: str, notebook: str) -> None:
    """Open ``notebook`` in a fresh workspace (nothing restored from an earlier test) and wait until it
    is the current widget."""
    page.goto(f"{url}/lab/tree/{notebook}?token={token}&reset")
    page.wait_for_function("(nb) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return !!w && !!w.context && w.context.path.endsWith(nb)"
                           " && !!document.querySelector('.jp-Notebook .jp-Cell'); }", arg=notebook,
                           timeout=120_000)


def run_all_cells(page, url: str, token: str, notebook: str, timeout_s: float = 400) -> None:
    """Open ``notebook`` in JupyterLab, clear its outputs, run all its cells, and wait until each has run."""
    open_notebook(page, url, token, notebook)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)  # the kernel has started
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    page.wait_for_function(f"() => ({COUNTS})().every(n => n === null)", timeout=30_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(f"() => ({COUNTS})().every(n => n !== null)", timeout=timeout_s * 1000)
    page.wait_for_function(KERNEL_IDLE, timeout=60_000)


def run_cells(page, url: str, token: str, notebook: str, markers: list[str], timeout_s: float = 300) -> None:
    """Open ``notebook``, clear its outputs, and run, in order, the code cells whose source contains each marker."""
    open_notebook(page, url, token, notebook)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    for marker in markers:
        index = page.evaluate("""(marker) => {
            const cells = window.jupyterapp.shell.currentWidget.content.widgets;
            const hits = cells.map((c, i) => [c, i]).filter(([c]) => c.model.type === 'code'
                && c.model.sharedModel.getSource().includes(marker));
            return hits.length === 1 ? hits[0][1] : -hits.length;
        }""", marker)
        assert index >= 0, f"{-index} code cells of {notebook} contain {marker!r}; expected one"
        page.evaluate("""(i) => { const nb = window.jupyterapp.shell.currentWidget.content;
            nb.activeCellIndex = i; nb.deselectAll();
            return window.jupyterapp.commands.execute('notebook:run-cell'); }""", index)
        page.wait_for_function("(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].model.executionCount"
                               " !== null", arg=index, timeout=timeout_s * 1000)
        page.wait_for_function(KERNEL_IDLE, timeout=timeout_s * 1000)


AUDIO_FACTS = """async (el) => {
    if (!el.duration || isNaN(el.duration)) {
        await new Promise((ok, bad) => { el.onloadedmetadata = ok; el.onerror = bad; setTimeout(ok, 10000); });
    }
    const bytes = await (await fetch(el.src)).arrayBuffer();
    const ctx = new OfflineAudioContext(1, 16000, 16000);
    const buf = await ctx.decodeAudioData(bytes);
    const x = buf.getChannelData(0);
    let peak = 0, sq = 0;
    for (let i = 0; i < x.length; i++) { peak = Math.max(peak, Math.abs(x[i])); sq += x[i] * x[i]; }
    el.muted = true;
    await el.play();
    await new Promise(ok => setTimeout(ok, 600));
    return {duration: el.duration, decoded_s: buf.duration, peak: peak, rms: Math.sqrt(sq / x.length),
            played_s: el.currentTime};
}"""


@contextlib.contextmanager
def chromium_page(height: int, args: tuple[str, ...] = ()):
    """A page of Debian's chromium (autoplay allowed; ``args``: more flags) -> (page, the page's uncaught errors);
    closed after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--disable-gpu", *args])
        page = browser.new_page(viewport={"width": 1400, "height": height})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield page, errors
        finally:
            browser.close()


def tracebacks(page) -> list[str]:
    """The tracebacks printed in the notebook's outputs."""
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                        ":has-text('Traceback')").all_inner_texts()


def test_playground_generates_audio_in_the_browser(lab):
    url, token = lab
    with chromium_page(1100) as (page, errors):
        run_all_cells(page, url, token, "12_playground.ipynb")
        counts = page.evaluate(COUNTS)
        assert counts == list(range(1, len(counts) + 1)), counts  # every cell ran, in order, in this kernel
        assert not tracebacks(page)

        box = page.locator(".csm-line input").first
        box.scroll_into_view_if_needed()
        status = page.locator(".csm-status").first
        before = status.inner_text()
        box.fill(LINE)
        page.locator("button:has-text('Generate')").first.click()
        page.wait_for_function("(before) => { const t = document.querySelector('.csm-status').textContent;"
                               " return t.includes('first audio after') && t !== before; }",
                               arg=before, timeout=120_000)
        text = status.inner_text()
        reported = float(re.search(r"duration ([\d.]+) s", text).group(1))
        page.wait_for_function("(line) => document.querySelector('.csm-reply').textContent.includes(line)"
                               " && document.querySelector('.csm-reply audio')", arg=LINE, timeout=30_000)
        text = status.inner_text()  # the widgets' updates arrive one by one: read it once the reply is in
        reply = page.locator(".csm-reply audio").first
        reply.scroll_into_view_if_needed()
        facts = reply.evaluate(AUDIO_FACTS)
        assert abs(facts["duration"] - reported) < 0.05 and abs(facts["decoded_s"] - reported) < 0.05, (facts, text)
        assert facts["peak"] > 0.05 and facts["rms"] > 0.005, facts  # speech, not silence
        assert facts["played_s"] > 0, facts  # the player plays
        page.screenshot(path=str(outputs.figures_dir() / "12_playground.png"))
        assert not errors, errors


SPOKEN = "could you open the window please"


def test_playground_talk_mode_hears_a_microphone_and_answers(lab, tmp_path):
    """Chromium's fake microphone plays a flite recording (then silence); the playground's talk button records
    it, the end-of-turn rule stops the recording, the heard turn joins the conversation and the other speaker
    answers with audio."""
    import soundfile as sf

    from csm_lib import data

    audio, sr = data.synthesize(SPOKEN, "slt", data.Style(f0_mean=170.0, f0_std=25.0, stretch=1.0))
    wav = tmp_path / "microphone.wav"
    sf.write(wav, np.concatenate([np.asarray(audio, dtype=np.float32), np.zeros(4 * sr, dtype=np.float32)]), sr,
             subtype="PCM_16")
    mic = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
           f"--use-file-for-fake-audio-capture={wav}")
    url, token = lab
    with chromium_page(1100, mic) as (page, errors):
        run_cells(page, url, token, "12_playground.ipynb", ["pg = Playground(gen)", "display(pg.ui)"])
        assert not tracebacks(page)
        talk = page.locator(".csm-mic button.csm-talk").first
        talk.scroll_into_view_if_needed()
        talk.click()
        page.wait_for_function("() => document.querySelector('.csm-talk-note').textContent.includes('end of your"
                               " turn')", timeout=60_000)  # the kernel's end-of-turn rule stopped the recording
        status = page.locator(".csm-status").first
        page.wait_for_function("() => document.querySelector('.csm-status').textContent.includes('first audio')"
                               " && document.querySelector('.csm-reply audio')", timeout=120_000)
        history = page.locator(".csm-history").first.inner_text()
        heard = re.search(r"\[0\] (.*?) \(you, as heard\)", history)
        assert heard, history
        said, got = set(SPOKEN.split()), set(heard.group(1).split())
        assert len(said & got) >= len(said) / 2, (heard.group(1), SPOKEN)  # the recogniser heard the recording
        facts = page.locator(".csm-reply audio").first.evaluate(AUDIO_FACTS)
        assert facts["decoded_s"] > 0.3 and facts["peak"] > 0.05 and facts["rms"] > 0.005, (facts, status.inner_text())
        assert not errors, errors


CHAPTER_07_CELLS = ["from csm_lib.widgets import picker",  # the imports
                    "model, meta = load_model(CHECKPOINT)",  # the reference model's sidecar
                    "clips, said = {}, {}",  # a held-out conversation, its turn 3 generated with and without context
                    "display(picker(clips"]  # the picker
CHOICE = "test: generated turn 3, with context"


def test_chapter_07_picker_plays_a_generated_turn_in_the_browser(lab):
    url, token = lab
    with chromium_page(1000) as (page, errors):
        run_cells(page, url, token, "07b_reference_model.ipynb", CHAPTER_07_CELLS)
        printed = tracebacks(page)
        assert not printed, "\n".join(t[-1500:] for t in printed)
        player = page.locator("audio.csm-picked").first
        player.wait_for(state="attached", timeout=60_000)
        first = player.get_attribute("src")
        button = page.locator(f".widget-toggle-button:has-text('{CHOICE}')").first
        button.scroll_into_view_if_needed()
        button.click()
        page.wait_for_function("(first) => document.querySelector('audio.csm-picked').src !== first",
                               arg=first, timeout=60_000)
        facts = player.evaluate(AUDIO_FACTS)
        assert facts["decoded_s"] > 0.5 and abs(facts["duration"] - facts["decoded_s"]) < 0.05, facts
        assert facts["peak"] > 0.05 and facts["rms"] > 0.005, facts  # speech, not silence
        assert facts["played_s"] > 0, facts
        assert not errors, errors
