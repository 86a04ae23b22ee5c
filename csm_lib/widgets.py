"""Listening widgets: the playground of chapter 12, and players for the chapters where listening teaches.

    pg = Playground(load_generator())
    display(pg.ui)                       # type a line, pick a speaker, Generate, listen
    pg.add_flite_turn("are you coming to the market", speaker=0, voice="slt")   # the same, from code
    reply = pg.generate("yes I will bring the bags", speaker=1, seed=0)

``player(audio, sr)`` is an ``ipywidgets.Audio`` (an ``<audio>`` element in the browser, saved
with the notebook's widget state); ``picker({"name": audio, ...}, sr)`` a row of buttons (or a
slider) that chooses which one plays; ``grid_picker({row: {column: audio}}, sr)`` a dropdown and
buttons choosing one cell of a table of clips. A clip may be a function, computed when first chosen.

The playground builds a conversation turn by turn. A context turn is a line spoken by flite (a
voice, a pitch and a pace, as the corpus makes them: ``data.synthesize``); a generated turn joins
the conversation as its codes, as ``Conversation`` keeps it. Each generation is stateless
(``Generator.frames`` with the earlier turns as context, or none when "use context" is off), so
the same line can be heard both ways with the same seed. The audio comes out of the codec's
streaming decoder frame by frame; the time to the first chunk is reported, and the reply can be
decoded from only its first k codebooks.

**Talk to it.** Where the browser gives a microphone, ``Microphone`` records it at 16 kHz and sends
each 80 ms chunk to the kernel as it is recorded; the voice loop's listening half (``voice_loop.Listener``,
chapter 09: silero-vad, the end-of-turn rule, pocketsphinx fed chunk by chunk) hears it and stops the
recording when the rule ends your turn. Your turn joins the conversation as heard (the words the recogniser
found, the audio up to the decision), chapter 09's text LM writes the reply, and the other speaker says it.
``pg.talk(audio, speaker)`` does the same from code, with a recording played in the microphone's chunks.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable

import anywidget
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
import traitlets

from csm_lib import data
from csm_lib import voice_loop as V
from csm_lib.audio import wav_bytes
from csm_lib.generate import REFERENCE_TEMPERATURE, Generator, Segment

MAX_CHARS = 300  # one line of the playground
LISTEN_SILENCE_MS = 1000  # the end-of-turn rule's silence, as chapter 09 chose it (results/voice_loop.json)


def player(audio: torch.Tensor | np.ndarray, sr: int) -> widgets.Audio:
    """An audio player widget for float samples ``(T,)`` at ``sr``."""
    return widgets.Audio(value=wav_bytes(audio, sr), format="wav", autoplay=False, loop=False)


Clip = torch.Tensor | np.ndarray | Callable[[], torch.Tensor]  # audio, or a function computing it when first chosen


def _lazy_player(sr: int) -> tuple[widgets.Audio, Callable[[Clip, str], None]]:
    """A player and ``show(clip, key)``: computes each clip once (by ``key``) and plays it."""
    cache: dict[str, bytes] = {}
    audio = widgets.Audio(format="wav", autoplay=False, loop=False)
    audio.add_class("csm-picked")  # a handle for the browser test (tests/test_browser.py)

    def show(clip: Clip, key: str) -> None:
        if key not in cache:
            cache[key] = wav_bytes(clip() if callable(clip) else clip, sr)
        audio.value = cache[key]

    return audio, show


def picker(options: dict[str, Clip], sr: int, description: str = "hear", control: str = "buttons") -> widgets.VBox:
    """One player and a control naming each option (``"buttons"``, or a ``"slider"`` for ordered options)."""
    names = list(options)
    if control == "buttons":
        choice = widgets.ToggleButtons(options=names, description=description)
    elif control == "slider":
        choice = widgets.SelectionSlider(options=names, description=description, continuous_update=False,
                                         layout=widgets.Layout(width="520px"), style={"description_width": "90px"})
    else:
        raise ValueError(f"control={control!r}: expected 'buttons' or 'slider'")
    audio, show = _lazy_player(sr)
    choice.observe(lambda change: show(options[change["new"]], change["new"]), names="value")
    show(options[names[0]], names[0])
    return widgets.VBox([choice, audio])


def grid_picker(table: dict[str, dict[str, Clip]], sr: int, row: str = "row", column: str = "hear") -> widgets.VBox:
    """Choose a row (a dropdown) and a column (buttons) of ``table[row][column]`` and hear that cell.

    A pair of utterances and its versions, a reply and the systems saying it, a table cell and its
    worst/median/best sample: every row offers the columns of the first row.
    """
    rows = list(table)
    columns = list(table[rows[0]])
    if any(list(table[r]) != columns for r in rows):
        raise ValueError(f"every row needs the same columns {columns}")
    row_choice = widgets.Dropdown(options=rows, description=row, layout=widgets.Layout(width="620px"))
    column_choice = widgets.ToggleButtons(options=columns, description=column)
    audio, show = _lazy_player(sr)

    def update(_=None) -> None:
        r, c = row_choice.value, column_choice.value
        show(table[r][c], f"{r}\x00{c}")

    row_choice.observe(update, names="value")
    column_choice.observe(update, names="value")
    update()
    return widgets.VBox([row_choice, column_choice, audio])


# The browser half of the microphone: getUserMedia -> an AudioContext at 16 kHz -> 80 ms chunks of float32 samples,
# each sent to the kernel as a binary buffer the moment it is complete. The kernel answers {"kind": "stop"} when
# the end-of-turn rule fires; the button stops it too.
MICROPHONE_JS = """
function render({ model, el }) {
  const button = document.createElement("button");
  const note = document.createElement("span");
  button.className = "csm-talk jupyter-button";
  note.className = "csm-talk-note";
  note.style.marginLeft = "1em";
  el.append(button, note);
  let rec = null;
  const show = () => { button.textContent = rec ? "■ stop" : "● " + model.get("label"); };

  async function start() {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia(
        { audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    } catch (e) {
      note.textContent = "no microphone: " + e.message;
      model.send({ kind: "error", message: String(e.message) });
      return;
    }
    const ctx = new AudioContext({ sampleRate: model.get("sample_rate") });
    const source = ctx.createMediaStreamSource(stream);
    const node = ctx.createScriptProcessor(1024, 1, 1);
    const n = Math.round(ctx.sampleRate * model.get("chunk_ms") / 1000);
    let pending = new Float32Array(0);
    node.onaudioprocess = (e) => {
      const x = e.inputBuffer.getChannelData(0);
      const joined = new Float32Array(pending.length + x.length);
      joined.set(pending);
      joined.set(x, pending.length);
      pending = joined;
      while (rec && pending.length >= n) {
        model.send({ kind: "chunk" }, undefined, [pending.slice(0, n).buffer]);
        pending = pending.slice(n);
      }
    };
    source.connect(node);
    node.connect(ctx.destination);
    rec = { stream, ctx, node };
    model.send({ kind: "start", sample_rate: ctx.sampleRate });
    note.textContent = "listening…";
    show();
  }

  function stop(why) {
    if (!rec) return;
    rec.node.disconnect();
    rec.stream.getTracks().forEach((t) => t.stop());
    rec.ctx.close();
    rec = null;
    note.textContent = why;
    show();
  }

  button.addEventListener("click", () => {
    if (rec) { stop("stopped"); model.send({ kind: "stop" }); } else { start(); }
  });
  model.on("msg:custom", (msg) => { if (msg.kind === "stop") stop(msg.why || ""); });
  show();
  return () => stop("");
}
export default { render };
"""


class Microphone(anywidget.AnyWidget):
    """A button that records the browser's microphone: ``on_chunk(chunk)`` gets each 80 ms chunk (T,) at
    ``sample_rate`` as it is recorded; ``stop(why)`` ends the recording from the kernel; ``on_start()`` when
    recording begins, ``on_stop()`` when the reader presses stop, ``on_error(message)`` (no microphone)."""

    _esm = MICROPHONE_JS
    label = traitlets.Unicode("talk").tag(sync=True)
    sample_rate = traitlets.Int(V.SAMPLE_RATE).tag(sync=True)
    chunk_ms = traitlets.Int(V.CHUNK_MS).tag(sync=True)

    def __init__(self, on_chunk: Callable[[torch.Tensor], None], on_start: Callable[[], None] = lambda: None,
                 on_stop: Callable[[], None] = lambda: None, on_error: Callable[[str], None] = lambda m: None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.on_chunk, self.on_start, self.on_stop, self.on_error = on_chunk, on_start, on_stop, on_error
        self.on_msg(self._received)

    def stop(self, why: str = "") -> None:
        self.send({"kind": "stop", "why": why})

    def _received(self, _, content: dict, buffers: list) -> None:
        kind = content.get("kind")
        if kind == "start":
            if content.get("sample_rate") != self.sample_rate:  # a browser that cannot record at 16 kHz
                self.stop(f"the browser records at {content.get('sample_rate')} Hz, not {self.sample_rate}")
                self.on_error(f"the browser cannot record at {self.sample_rate} Hz")
                return
            self.on_start()
        elif kind == "chunk" and buffers:
            self.on_chunk(torch.from_numpy(np.frombuffer(bytes(buffers[0]), dtype=np.float32).copy()))
        elif kind == "stop":
            self.on_stop()
        elif kind == "error":
            self.on_error(str(content.get("message", "")))


class Playground:
    """A conversation built turn by turn in widgets (``ui``), or from code (``add_flite_turn``, ``generate``)."""

    def __init__(self, gen: Generator):
        self.gen = gen
        self.turns: list[dict] = []  # {"segment", "source", "audio"} in order
        self.last: dict | None = None  # the last generated reply
        K = gen.model.cfg.n_codebooks
        speakers = list(range(gen.n_speakers))
        style = {"description_width": "110px"}
        self.text = widgets.Text(placeholder="type a line", description="line", style=style,
                                 layout=widgets.Layout(width="600px"))
        self.speaker = widgets.Dropdown(options=speakers, description="speaker", style=style)
        self.voice = widgets.Dropdown(options=list(data.VOICES), value="slt", description="flite voice", style=style)
        self.pitch = widgets.FloatSlider(1.0, min=0.8, max=1.25, step=0.05, description="flite pitch x", style=style)
        self.pace = widgets.FloatSlider(1.0, min=0.7, max=1.4, step=0.05, description="flite slowness", style=style)
        self.temperature = widgets.FloatSlider(REFERENCE_TEMPERATURE, min=0.0, max=1.5, step=0.05,
                                               description="temperature", style=style)
        self.topk = widgets.IntSlider(50, min=1, max=gen.model.cfg.audio_vocab_size, description="top-k", style=style)
        self.seed = widgets.IntText(0, description="seed", style=style)
        self.codebooks = widgets.IntSlider(K, min=1, max=K, description="codebooks", style=style)
        self.use_context = widgets.Checkbox(True, description="use context")
        self.add_button = widgets.Button(description="Add as context (flite)", icon="plus")
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.clear_button = widgets.Button(description="Clear conversation", icon="trash")
        self.progress = widgets.IntProgress(0, min=0, max=1, description="frames", style=style)
        self.status = widgets.HTML()
        self.history = widgets.VBox()
        self.reply = widgets.VBox()
        self.codes_view = widgets.Output()
        for b in (self.add_button, self.generate_button, self.clear_button):
            b.layout = widgets.Layout(width="auto")
        for w, name in ((self.text, "csm-line"), (self.status, "csm-status"), (self.reply, "csm-reply"),
                        (self.history, "csm-history")):
            w.add_class(name)  # handles for the browser test (tests/test_browser.py)
        self.mic = Microphone(self._mic_chunk, self._mic_start, lambda: self._safely(self._mic_stopped),
                              self._mic_error)
        self.mic.add_class("csm-mic")
        self._ear: V.Listener | None = None  # built when first needed: silero-vad and pocketsphinx
        self._text_lm: tuple | None = None
        self._recorded: list[torch.Tensor] | None = None  # the microphone's chunks of the turn being heard
        self.add_button.on_click(lambda _: self._safely(self._add_from_widgets))
        self.generate_button.on_click(lambda _: self._safely(self._generate_from_widgets))
        self.clear_button.on_click(lambda _: self.clear())
        flite = widgets.HBox([self.voice, self.pitch, self.pace])
        sampling = widgets.VBox([widgets.HBox([self.temperature, self.topk]),
                                 widgets.HBox([self.seed, self.codebooks, self.use_context])])
        self.ui = widgets.VBox([
            widgets.HTML("<b>conversation so far</b>"), self.history,
            widgets.HBox([self.text, self.speaker]), flite, sampling,
            widgets.HBox([self.add_button, self.generate_button, self.clear_button]),
            widgets.HBox([widgets.HTML("<b>or talk</b> as the speaker chosen above (the other one answers):"),
                          self.mic]),
            self.progress, self.status, self.reply, self.codes_view])
        self._show_history()

    # --- from code --------------------------------------------------------------------------
    def add_flite_turn(self, text: str, speaker: int, voice: str = "slt", pitch: float = 1.0,
                       pace: float = 1.0) -> dict:
        """A context turn spoken by flite's ``voice`` at ``pitch`` x its usual f0 and ``pace`` x its duration."""
        self._check(text, speaker)
        f0 = data.VOICES[voice]["default_f0"] * pitch
        audio, sr = data.synthesize(text, voice, data.Style(f0_mean=f0, f0_std=0.15 * f0, stretch=pace))
        turn = {"segment": Segment(speaker, text, torch.as_tensor(audio), sr), "audio": torch.as_tensor(audio),
                "source": f"flite {voice}"}
        self.turns.append(turn)
        self._show_history()
        return turn

    def generate(self, text: str, speaker: int, temperature: float = REFERENCE_TEMPERATURE, topk: int = 50,
                 seed: int = 0, codebooks: int | None = None, use_context: bool = True,
                 max_audio_length_ms: float = 10_000, join: bool = True) -> dict:
        """The next turn, generated: ``{"audio", "sr", "codes" (K, F), "first_audio_ms", "duration_s"}``.

        With ``join`` it joins the conversation (as its codes). ``codebooks``: decode only the first
        k codebooks (what the model generated is unchanged; the reply played is coarser).
        """
        self._check(text, speaker)
        gen, K = self.gen, self.gen.model.cfg.n_codebooks
        context = [t["segment"] for t in self.turns] if use_context else []
        max_frames = int(max_audio_length_ms // gen.frame_ms)
        self.progress.max, self.progress.value = max_frames, 0
        codes: list[torch.Tensor] = []

        def frames():
            for c in gen.frames(text, speaker, context, max_audio_length_ms, temperature, topk, seed):
                codes.append(c)
                self.progress.value = len(codes)
                yield c

        t0, first, chunks = time.perf_counter(), None, []
        for chunk in gen.stream_codes(frames(), chunk_frames=1):  # the codec's causal decoder, frame by frame
            first = first if first is not None else time.perf_counter() - t0
            chunks.append(chunk)
        all_codes = torch.cat(codes).T if codes else torch.zeros(K, 0, dtype=torch.long)  # (K, F)
        k = codebooks or K
        if k < K and codes:
            audio = gen.codec.decode(all_codes[None, :k])[0]
        else:
            audio = torch.cat(chunks) if chunks else torch.zeros(0)
        reply = {"text": text, "speaker": speaker, "audio": audio, "sr": gen.sample_rate, "codes": all_codes,
                 "codebooks": k, "first_audio_ms": None if first is None else 1000 * first,
                 "duration_s": audio.numel() / gen.sample_rate, "context_turns": len(context)}
        if codes and join:
            self.turns.append({"segment": Segment(speaker, text, codes=all_codes), "audio": audio,
                               "source": f"generated, seed {seed}"})
        self.last = reply
        self._show_reply(reply)
        self._show_history()
        return reply

    def talk(self, audio: torch.Tensor, speaker: int, seed: int = 0, **sampling) -> dict:
        """Your turn ``audio`` (T,) at 16 kHz, heard as the microphone sends it (80 ms chunks, then silence
        until the end-of-turn rule fires), answered by the other speaker: ``{"heard", "reply"}`` (``reply`` as
        ``generate`` returns it; ``sampling``: ``generate``'s temperature, topk, codebooks, use_context)."""
        self._check_speaker(speaker)
        ear = self._listener()
        heard = V.listen(audio, ear.detector, ear.recognizer, ear.rule, V.SimulatedClock(), asr_tail_ms=ear.asr_tail_ms)
        waited = torch.zeros(round(heard.heard_s * V.SAMPLE_RATE) - len(heard.audio))  # the silence the rule waited
        return self._answer(heard.text, torch.cat([heard.audio, waited]), speaker, seed, **sampling)

    def _answer(self, heard: str, audio: torch.Tensor, speaker: int, seed: int, **sampling) -> dict:
        """The heard turn joins the conversation; the text LM writes the reply; the other speaker says it."""
        from csm_lib.baselines.train import CHECKPOINTS, load_text_lm, write_reply

        if not heard:
            raise ValueError("no words were heard: speak a little longer or louder, then pause")
        self.turns.append({"segment": Segment(speaker, heard, audio, V.SAMPLE_RATE), "audio": audio,
                           "source": "you, as heard"})
        self._show_history()
        if self._text_lm is None:
            self._text_lm = load_text_lm(CHECKPOINTS["textlm"])[:2]
        other = (speaker + 1) % self.gen.n_speakers
        line = write_reply(*self._text_lm, heard, speaker, other)["text"]
        return {"heard": heard, "reply": self.generate(line, other, seed=seed, **sampling)}

    def _listener(self) -> V.Listener:
        """The voice loop's ear, with chapter 09's end-of-turn rule; pocketsphinx's cepstral mean starts from
        flite's voices (a real microphone differs: the live mean adapts within the first seconds)."""
        if self._ear is None:
            lines = ["the weather has been lovely all week", "could you pass me the salt please"]
            calibration = [torch.as_tensor(data.synthesize(line, v, data.Style(
                f0_mean=data.VOICES[v]["default_f0"], f0_std=0.15 * data.VOICES[v]["default_f0"], stretch=1.0))[0])
                for v in data.VOICES for line in lines]
            self._ear = V.Listener(V.SileroDetector(), V.StreamingRecognizer(V.calibrate_cmn(calibration)),
                                   V.EndOfTurn(silence_ms=LISTEN_SILENCE_MS))
        return self._ear

    def clear(self) -> None:
        self.turns, self.last = [], None
        self.reply.children, self.status.value = (), ""
        self.codes_view.clear_output()
        self._show_history()

    # --- the widgets ---------------------------------------------------------------------------
    def _check(self, text: str, speaker: int) -> None:
        if not text or not text.strip():
            raise ValueError("the line is empty: type what the speaker says")
        if len(text) > MAX_CHARS:
            raise ValueError(f"the line has {len(text)} characters; the playground takes at most {MAX_CHARS}")
        self._check_speaker(speaker)

    def _check_speaker(self, speaker: int) -> None:
        if speaker not in range(self.gen.n_speakers):
            raise ValueError(f"speaker {speaker}: the model knows speakers 0..{self.gen.n_speakers - 1}")

    def _safely(self, action: Callable[[], None]) -> None:
        """Run a button's action; a bad input becomes a message, not a traceback."""
        buttons = (self.add_button, self.generate_button)
        for b in buttons:
            b.disabled = True
        try:
            action()
        except (ValueError, RuntimeError, FileNotFoundError) as e:
            self.status.value = f"<span style='color:#b00'>⚠ {html.escape(str(e))}</span>"
        finally:
            for b in buttons:
                b.disabled = False

    def _add_from_widgets(self) -> None:
        self.status.value = "speaking with flite…"
        self.add_flite_turn(self.text.value, self.speaker.value, self.voice.value, self.pitch.value, self.pace.value)
        self.status.value = f"added a context turn: {len(self.turns)} turns"
        self.text.value = ""

    def _generate_from_widgets(self) -> None:
        self.status.value = "generating…"
        self.generate(self.text.value, self.speaker.value, self.temperature.value, self.topk.value,
                      self.seed.value, self.codebooks.value, self.use_context.value)
        self.text.value = ""

    def _mic_start(self) -> None:
        self._listener().start()
        self._recorded = []
        self.status.value = "listening… (pause when you are done)"

    def _mic_chunk(self, chunk: torch.Tensor) -> None:
        if self._recorded is None:  # chunks still in flight after the turn ended
            return
        self._recorded.append(chunk)
        if self._listener().push(chunk):
            self.mic.stop("heard the end of your turn")
            self._safely(self._mic_stopped)

    def _mic_stopped(self) -> None:
        """The turn is over (the rule fired, or the reader pressed stop): hear it, answer it."""
        if self._recorded is None:
            return
        audio, self._recorded = torch.cat(self._recorded or [torch.zeros(0)]), None
        heard = self._listener().finish()
        self.status.value = f"heard: <i>{html.escape(heard)}</i>; answering…"
        self._answer(heard, audio, self.speaker.value, self.seed.value, temperature=self.temperature.value,
                     topk=self.topk.value, codebooks=self.codebooks.value, use_context=self.use_context.value)

    def _mic_error(self, message: str) -> None:
        self._recorded = None
        self.status.value = f"<span style='color:#b00'>⚠ {html.escape(message)}</span>"

    def _show_history(self) -> None:
        rows = []
        for i, t in enumerate(self.turns):
            s = t["segment"]
            label = widgets.HTML(f"{i + 1}. <b>[{s.speaker}]</b> {html.escape(s.text)} <i>({t['source']})</i>")
            rows.append(widgets.HBox([label, player(t["audio"], self.gen.sample_rate)]))
        self.history.children = rows or [widgets.HTML("<i>no turns yet: add context turns, or generate</i>")]

    def _show_reply(self, r: dict) -> None:
        if r["first_audio_ms"] is None:
            self.status.value = "the model ended the turn at once (no audio): try another seed or temperature"
            self.reply.children = ()
            return
        self.status.value = (f"first audio after <b>{r['first_audio_ms']:.0f} ms</b> · duration "
                             f"<b class='duration'>{r['duration_s']:.2f}</b> s · {r['codes'].shape[1]} frames · "
                             f"{r['codebooks']} codebooks decoded · {r['context_turns']} context turns")
        self.reply.children = (widgets.HTML(f"<b>[{r['speaker']}]</b> {html.escape(r['text'])}"),
                               player(r["audio"], r["sr"]))
        self.codes_view.clear_output(wait=True)
        with self.codes_view:
            fig, ax = plt.subplots(figsize=(8, 2.2))
            ax.imshow(r["codes"].numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
            ax.set_xlabel("frame (80 ms each)")
            ax.set_ylabel("codebook")
            ax.set_title("the reply's codes (codebook 0: semantic)")
            fig.tight_layout()
            plt.show()
