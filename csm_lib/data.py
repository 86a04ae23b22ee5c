"""A conversational speech corpus made on the spot with flite: two speakers, many topics, styles.

Why synthesize? Nothing may be downloaded at run time, and a synthetic corpus lets us know the
truth behind every clip: who speaks, what is said, and how (the style). Each speaker of a
conversation gets a *speaking style* (pitch level, pitch range, speaking rate) that stays
fixed for that speaker inside the conversation and changes from one conversation to the next.
The style is never written in the text, so only the audio of earlier turns reveals it: that is
exactly what CSM's context is supposed to exploit.

Layout on disk (``root/<key>/``, where ``key`` hashes every generator parameter)::

    manifest.jsonl    one JSON line per turn (see ``Turn``), written last and atomically
    wav/c00012_03.wav 16 kHz mono PCM, loudness-normalised to -23 dBFS
    phones.json       every turn's phones with their end times, as flite said them (``alignments``)

**Free alignments.** flite knows when it says each phone: ``-psdur`` prints them with their end
times (``pau:0.164 hh:0.255 ax:0.304 ...``) in the same call that writes the audio (the audio is
byte-for-byte the same). ``alignments(folder)`` returns them; ``dataset.frame_alignment`` turns
them into a label per codec frame. A corpus built before they were recorded gets them by running
flite again (``-o none``: the same time as the synthesis).

Text (``CorpusConfig.text``): ``templates`` fills the slots of ``dialogue.py``'s topic templates
(557 distinct words; a held-out conversation mostly repeats training sentences), ``wordnet``
builds the same turn-taking from real English sentences (``sentences.py``) and splits by
sentence as well as by conversation: valid and test conversations use sentences no training
conversation uses, and a fourth split, ``unseen``, uses sentences with words training never sees.

Build with ``python -m csm_lib.data --hours 1`` (``--text=wordnet`` for real sentences).

Explained in chapter 01 (``notebooks/01_data.ipynb``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from csm_lib import audio
from csm_lib import sentences as S
from csm_lib.dialogue import SentencePool, make_dialogue, make_natural_dialogue
from csm_lib.progress import progress

if TYPE_CHECKING:
    import torch

GENERATOR_VERSION = 2  # bump when the text or the synthesis changes, so old caches are not reused

# flite's four voices that ship at 16 kHz, with their own pitch as measured with pYIN on a long
# sentence; rms is a clustergen voice that ignores the int_f0_target_* features (pitch knobs).
VOICES: dict[str, dict] = {
    "awb": {"sex": "male", "default_f0": 125.0, "honours_pitch": True},
    "rms": {"sex": "male", "default_f0": 102.0, "honours_pitch": False},
    "slt": {"sex": "female", "default_f0": 170.0, "honours_pitch": True},
    "kal16": {"sex": "male", "default_f0": 90.0, "honours_pitch": True},
}

DEFAULT_ROOT = Path(os.environ.get("CSM_DATA", Path(__file__).resolve().parents[1] / "data")) / "corpus"
SECONDS_PER_CONVERSATION = 34.5  # measured mean of the default generator; used to turn hours into sizes
SPLITS = ("train", "valid", "test", "unseen")  # unseen: only in a wordnet corpus
TEXTS = ("templates", "wordnet")


@dataclass(frozen=True)
class Style:
    """How a speaker talks in one conversation: the flite knobs, as requested.

    f0_mean, f0_std: target pitch level and range in Hz (ignored by voices that do not honour
    pitch); stretch: duration multiplier (>1 is slower speech).
    """

    f0_mean: float
    f0_std: float
    stretch: float

    def flite_args(self) -> list[str]:
        return [
            "--setf", f"int_f0_target_mean={self.f0_mean:.1f}",
            "--setf", f"int_f0_target_stddev={self.f0_std:.1f}",
            "--setf", f"duration_stretch={self.stretch:.3f}",
        ]


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides the corpus; its hash names the cache folder."""

    n_conversations: int = 140
    min_turns: int = 4
    max_turns: int = 8
    voices: tuple[str, ...] = ("awb", "rms", "slt", "kal16")
    pitch_factor: tuple[float, float] = (0.85, 1.20)  # f0_mean = voice default x U(lo, hi)
    pitch_range: tuple[float, float] = (0.08, 0.20)  # f0_std = f0_mean x U(lo, hi)
    stretch: tuple[float, float] = (0.85, 1.25)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    version: int = field(default=GENERATOR_VERSION)
    text: str = "templates"  # or "wordnet" (module docstring)
    unseen_share: float = 0.0  # wordnet: share of conversations in the unseen-words split

    def __post_init__(self) -> None:
        unknown = [v for v in self.voices if v not in VOICES]
        if unknown:
            raise ValueError(f"unknown flite voice(s) {unknown}; choose from {sorted(VOICES)}")
        if len(set(self.voices)) < 2:
            raise ValueError(f"a two-speaker corpus needs at least 2 distinct voices, got {self.voices}")
        if self.text not in TEXTS:
            raise ValueError(f"text must be one of {TEXTS}, got {self.text!r}")
        if not 0 <= self.unseen_share < 1 or (self.unseen_share and self.text != "wordnet"):
            raise ValueError(f"unseen_share must be in [0, 1) and needs text='wordnet', got {self.unseen_share}")
        if self.n_conversations < self.n_splits:
            raise ValueError(f"n_conversations must be at least {self.n_splits} (one per split), "
                             f"got {self.n_conversations}")
        if not 2 <= self.min_turns <= self.max_turns:
            raise ValueError(f"need 2 <= min_turns <= max_turns, got {self.min_turns}, {self.max_turns}")
        for name in ("pitch_factor", "pitch_range", "stretch"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
        if abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError(f"split_fractions must be non-negative and sum to 1, got {self.split_fractions}")

    @classmethod
    def for_hours(cls, hours: float, **overrides) -> CorpusConfig:
        """A config whose corpus holds about ``hours`` of speech."""
        if not hours > 0:
            raise ValueError(f"hours must be positive, got {hours}")
        least = len(SPLITS) - (0 if overrides.get("unseen_share") else 1)  # one conversation per split
        n = max(least, math.ceil(hours * 3600 / SECONDS_PER_CONVERSATION))
        return cls(n_conversations=n, **overrides)

    @property
    def n_splits(self) -> int:
        return len(SPLITS) if self.unseen_share else len(SPLITS) - 1

    def key(self) -> str:
        fields = asdict(self)
        for name in ("text", "unseen_share"):  # added later: at their defaults, the older corpora keep their keys
            if fields[name] == getattr(CorpusConfig, name):
                del fields[name]
        blob = json.dumps(fields, sort_keys=True).encode()
        return f"v{self.version}-n{self.n_conversations}-" + hashlib.sha1(blob).hexdigest()[:10]


@dataclass(frozen=True)
class Turn:
    """One row of the manifest: a turn of a conversation and where its audio lives."""

    conversation: str
    turn: int
    speaker: int  # 0 or 1 inside the conversation (CSM's speaker id)
    voice: str
    style: Style
    text: str
    topic: str
    split: str
    wav: str  # path relative to the corpus folder
    duration: float = 0.0  # seconds, filled in after synthesis


def corpus_of(t: dict) -> CorpusConfig:
    """The corpus of training settings ``t`` (``train.TrainConfig`` as a dict; older ones lack ``text``)."""
    return CorpusConfig.for_hours(t["hours"], seed=t["corpus_seed"], text=t.get("text", "templates"),
                                  unseen_share=t.get("unseen_share", 0.0))


def require_flite() -> str:
    """Path to the flite binary, or a RuntimeError that says how to install it."""
    path = shutil.which("flite")
    if path is None:
        raise RuntimeError(
            "flite is not installed, and the corpus is synthesised with it. Install it with "
            "`sudo apt-get install flite` (Debian/Ubuntu) or `brew install flite` (macOS), "
            "or run `make workbook`, which tries apt-get for you."
        )
    return path


def _flite(text: str, voice: str, style: Style | None, out: str) -> str:
    """Run flite once, writing audio to ``out`` (or ``"none"``); returns its ``-psdur`` line."""
    if voice not in VOICES:
        raise ValueError(f"unknown flite voice {voice!r}; choose from {sorted(VOICES)}")
    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    args = [require_flite(), "-voice", voice, "-psdur", *(style.flite_args() if style else []), "-t", text, "-o", out]
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0 or (out != "none" and not Path(out).exists()):
        raise RuntimeError(f"flite failed for voice {voice!r}: {res.stderr.strip()}")
    return res.stdout.strip()


def parse_phones(psdur: str) -> list[tuple[str, float]]:
    """flite's ``-psdur`` line -> ``[(phone, end time in s), ...]``: ``"pau:0.164 hh:0.255"`` ->
    ``[("pau", 0.164), ("hh", 0.255)]``. flite's phones carry no stress mark (``t2p`` adds them)."""
    out = []
    for item in psdur.split():
        phone, _, end = item.rpartition(":")
        out.append((phone, float(end)))
    if not out or any(b[1] < a[1] for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"not a -psdur line of increasing end times: {psdur[:80]!r}")
    return out


def synthesize_with_phones(text: str, voice: str, style: Style | None = None,
                           sr: int = audio.SAMPLE_RATE) -> tuple[torch.Tensor, int, list[tuple[str, float]]]:
    """Speak ``text`` with a flite voice: float32 audio ``(T,)`` at ``sr``, and each phone with its end time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        phones = parse_phones(_flite(text, voice, style, str(out)))
        x, _ = audio.load(out, sr=sr)
    return x, sr, phones


def synthesize(text: str, voice: str, style: Style | None = None, sr: int = audio.SAMPLE_RATE):
    """Speak ``text`` with a flite voice: returns float32 audio ``(T,)`` at ``sr`` (16 kHz native).

    ``style=None`` uses the voice's own pitch and rate.
    """
    x, sr, _ = synthesize_with_phones(text, voice, style, sr)
    return x, sr


def sample_style(voice: str, cfg: CorpusConfig, rng: random.Random) -> Style:
    """Draw one speaker's style for one conversation."""
    f0 = VOICES[voice]["default_f0"] * rng.uniform(*cfg.pitch_factor)
    return Style(f0_mean=round(f0, 1), f0_std=round(f0 * rng.uniform(*cfg.pitch_range), 1),
                 stretch=round(rng.uniform(*cfg.stretch), 3))


def conversation_splits(cfg: CorpusConfig) -> list[str]:
    """The split of each conversation: shuffled, cut by ``split_fractions`` (and ``unseen_share``)."""
    order = list(range(cfg.n_conversations))
    random.Random(cfg.seed).shuffle(order)
    n_unseen = max(1, round(cfg.unseen_share * cfg.n_conversations)) if cfg.unseen_share else 0
    n_valid, n_test = (max(1, round(f * (cfg.n_conversations - n_unseen))) for f in cfg.split_fractions[1:])
    n_train = cfg.n_conversations - n_unseen - n_valid - n_test  # every split holds at least one conversation
    bounds = [("train", n_train), ("valid", n_train + n_valid), ("test", n_train + n_valid + n_test),
              ("unseen", cfg.n_conversations)]
    split_of = [""] * cfg.n_conversations
    for r, c in enumerate(order):
        split_of[c] = next(name for name, end in bounds if r < end)
    return split_of


def sentence_pools(cfg: CorpusConfig) -> dict[str, dict[str, list[str]]]:
    """wordnet: each split's sentences by kind, shuffled with the corpus seed (``sentences.split_sentences``)."""
    splits = S.split_sentences(S.wordnet_sentences(), cfg.seed)
    return {name: {k: [s for s in sents if S.kind(s) == k] for k in S.KINDS} for name, sents in splits.items()}


def plan(cfg: CorpusConfig) -> list[Turn]:
    """All turns of the corpus, text and style decided, audio not yet made. Deterministic in cfg."""
    split_of = conversation_splits(cfg)
    pools = sentence_pools(cfg) if cfg.text == "wordnet" else {}
    index = {name: 0 for name in SPLITS}  # a conversation's rank inside its split: where it reads its pool
    turns = []
    for c in range(cfg.n_conversations):
        rng = random.Random(f"{cfg.seed}-{c}")  # each conversation is reproducible on its own
        voices = rng.sample(list(cfg.voices), 2)
        styles = [sample_style(v, cfg, rng) for v in voices]
        n_turns = rng.randint(cfg.min_turns, cfg.max_turns)
        if cfg.text == "wordnet":
            pool = SentencePool(pools[split_of[c]], start=index[split_of[c]] * 2 * cfg.max_turns)
            topic, texts = make_natural_dialogue(rng, n_turns, pool)
        else:
            topic, texts = make_dialogue(rng, n_turns)
        index[split_of[c]] += 1
        cid = f"c{c:05d}"
        for t, text in enumerate(texts):
            spk = t % 2
            turns.append(Turn(cid, t, spk, voices[spk], styles[spk], text, topic, split_of[c],
                              f"wav/{cid}_{t:02d}.wav"))
    return turns


def _render(job: tuple[Turn, str]) -> tuple[float, str]:
    """Worker: synthesize one turn, normalise its loudness, write it. Returns its duration (s) and phones."""
    turn, folder = job
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        psdur = _flite(turn.text, turn.voice, turn.style, str(out))
        x, sr = audio.load(out)
    audio.save(Path(folder) / turn.wav, audio.normalize_loudness(x), sr)
    return len(x) / sr, psdur


def _phones_only(turn: Turn) -> str:
    return _flite(turn.text, turn.voice, turn.style, "none")


def build(cfg: CorpusConfig = CorpusConfig(), root: str | Path = DEFAULT_ROOT, workers: int | None = None,
          force: bool = False) -> Path:
    """Synthesize the corpus for ``cfg`` under ``root/<cfg.key()>`` unless it is already there.

    Returns the corpus folder. The manifest is written last (atomically), so a folder with a
    manifest is complete; an interrupted build is simply rebuilt.
    """
    require_flite()
    folder = Path(root) / cfg.key()
    manifest = folder / "manifest.jsonl"
    if manifest.exists() and not force:
        return folder
    turns = plan(cfg)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    jobs = [(t, str(folder)) for t in turns]
    # Threads, not processes: the work is the flite subprocess, which runs outside the GIL, and
    # forking a process that has already used torch's thread pool can deadlock.
    with ThreadPoolExecutor(workers) as pool:
        done = list(progress(pool.map(_render, jobs), total=len(jobs), desc="synthesizing turns", unit="turn"))
    wall = time.perf_counter() - t0
    durations = [d for d, _ in done]
    _write_phones(folder, {Path(t.wav).stem: p for t, (_, p) in zip(turns, done, strict=True)})
    rows = [asdict(t) | {"duration": round(d, 4)} for t, d in zip(turns, durations, strict=True)]
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = {"config": asdict(cfg), "turns": len(rows), "hours": sum(durations) / 3600,
            "build_seconds": wall, "workers": workers,
            "realtime_factor": sum(durations) / wall}
    (folder / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, manifest)
    return folder


def _write_phones(folder: Path, phones: dict[str, str]) -> None:
    tmp = folder / "phones.json.tmp"
    tmp.write_text(json.dumps(phones, indent=0, sort_keys=True) + "\n")
    os.replace(tmp, folder / "phones.json")


def alignments(folder: str | Path, workers: int | None = None) -> dict[str, list[tuple[str, float]]]:
    """Every turn's phones with their end times (s), keyed by the wav's stem (``c00012_03``), scaled to
    the audio's duration (``scale_to``).

    Read from ``phones.json``, written by ``build``; a corpus built without it runs flite once more
    per turn (no audio written) and writes it, atomically."""
    folder = Path(folder)
    path = folder / "phones.json"
    if not path.exists():
        rows = load_manifest(folder)
        turns = [Turn(**(r | {"style": Style(**r["style"]), "wav": str(Path(r["wav"]).relative_to(folder))}))
                 for r in rows]
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            lines = list(progress(pool.map(_phones_only, turns), total=len(turns), desc="aligning turns",
                                  unit="turn"))
        _write_phones(folder, {Path(t.wav).stem: p for t, p in zip(turns, lines, strict=True)})
    durations = {Path(r["wav"]).stem: r["duration"] for r in load_manifest(folder)}
    return {stem: scale_to(parse_phones(line), durations[stem]) for stem, line in json.loads(path.read_text()).items()}


def scale_to(phones: list[tuple[str, float]], duration: float) -> list[tuple[str, float]]:
    """Phone end times stretched so the last ends with the audio: the diphone voice kal16 makes audio
    up to ~5% shorter than its phone times say (the other voices end within 5 ms)."""
    k = duration / phones[-1][1]
    return [(p, round(t * k, 4)) for p, t in phones]


def describe(cfg: CorpusConfig | dict) -> str:
    """A corpus in words, for the tables a reader reads: ``"wordnet, 40 h, seed 3"`` (``cfg.key()``, the folder's
    name, is for the cache)."""
    c = cfg if isinstance(cfg, dict) else asdict(cfg)
    hours = c["n_conversations"] * SECONDS_PER_CONVERSATION / 3600
    return f"{c.get('text', 'templates')}, {hours:.0f} h, seed {c['seed']}"


def load_manifest(folder: str | Path, split: str | None = None) -> list[dict]:
    """Rows of a built corpus (optionally one split), with ``wav`` made an absolute path."""
    folder = Path(folder)
    manifest = folder / "manifest.jsonl"
    if not manifest.exists():
        raise FileNotFoundError(f"no corpus at {folder}: build it with `python -m csm_lib.data` first")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows:
        r["wav"] = str(folder / r["wav"])
    return [r for r in rows if split is None or r["split"] == split]


def conversation_audio(rows: list[dict], conversation: str, gap_s: float = 0.3) -> tuple:
    """The turns of one conversation joined into one clip ``(T,)`` with ``gap_s`` of silence between."""
    import torch

    turns = sorted((r for r in rows if r["conversation"] == conversation), key=lambda r: r["turn"])
    if not turns:
        raise ValueError(f"no turns of conversation {conversation!r} in these rows")
    gap = torch.zeros(int(gap_s * audio.SAMPLE_RATE))
    return torch.cat([torch.cat([audio.load(r["wav"])[0], gap]) for r in turns])[: -len(gap) or None], audio.SAMPLE_RATE


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description="Build the flite conversational corpus (cached).")
    p.add_argument("--hours", type=float, default=1.0, help="about how much speech (default 1 h)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text", default="templates", choices=TEXTS, help="template sentences or real ones (wordnet)")
    p.add_argument("--unseen_share", type=float, default=0.0, help="wordnet: share of unseen-word conversations")
    p.add_argument("--workers", type=int, default=None, help="parallel flite jobs (default: all cores)")
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--report", default=None, help="also write the build info to this JSON file")
    a = p.parse_args(argv)
    cfg = CorpusConfig.for_hours(a.hours, seed=a.seed, text=a.text, unseen_share=a.unseen_share)
    folder = build(cfg, a.root, a.workers, a.force)
    info = json.loads((folder / "info.json").read_text()) | {"corpus": folder.name}
    if a.report:
        report = Path(a.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        command = "python -m csm_lib.data " + " ".join(argv)
        report.write_text(json.dumps(info | {"command": command}, indent=2) + "\n")
    print(json.dumps({k: info[k] for k in ("corpus", "turns", "hours", "build_seconds", "realtime_factor")}, indent=2))


if __name__ == "__main__":
    main()
