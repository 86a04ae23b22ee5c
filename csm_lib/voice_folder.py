"""Your recordings as training turns: a folder in the LJSpeech layout -> the turns CSM trains on.

    my_voice/
      metadata.csv        one line per clip:  id|text
      wavs/<id>.wav       any sample rate, mono or stereo (resampled to 16 kHz, averaged to mono)

``metadata.csv`` may be LJSpeech's own ``id|text|normalized text`` (the normalized text is read), or
start with a header naming its columns, ``id|text|speaker|conversation`` (any order; ``id`` and
``text`` required): ``speaker`` is the CSM speaker id of each clip, ``conversation`` groups clips
into conversations in file order, so each clip is trained with the clips before it as its context.
Without a ``conversation`` column, every ``group`` consecutive clips of a speaker make one
conversation: the model still learns to continue a voice from its earlier turns, which is what
cloning by context asks of it.

Everything is checked before any audio is encoded, and each problem is a ``FolderError`` naming
the file (and line) and what is expected: a missing ``metadata.csv`` or wav, a line without
``id|text``, empty text, a repeated id, a speaker id out of range, an unreadable, silent, too
short or too long clip (longer than the model's window of ``max_len`` positions, text included).

``turns`` encodes the clips with the codec (cached in a file keyed by the folder's content and the
codec's fingerprint) and tokenizes them as ``dataset.Turn``s, the unit ``dataset.ConversationWindows``
cuts training windows from. Real recordings have no free alignment (the corpus's flite phone times),
and none is needed: the recipe that ships trains without an alignment loss (chapter 07b).

``festival`` speaks text with one of Debian's festival voices: the chapter's "your recordings" are
a voice the workbook never trained on, made here so that the chapter runs anywhere.

Explained in chapter 13 (``notebooks/13_your_voice.ipynb``).
"""

from __future__ import annotations

import csv
import hashlib
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from csm_lib import audio as A
from csm_lib import checkpoint
from csm_lib.codec import Codec
from csm_lib.dataset import Turn, tokenize_turns
from csm_lib.progress import progress
from csm_lib.text import N_SPEAKERS, AnyTokenizer

MIN_SECONDS = 0.3  # a clip shorter than this holds no sentence
SILENCE_DB = -60.0  # a clip quieter than this (RMS, dBFS) is silence
COLUMNS = ("id", "text", "speaker", "conversation")


class FolderError(ValueError):
    """A problem with a recordings folder: names the file and what is expected."""


@dataclass
class Clip:
    id: str
    text: str
    speaker: int
    conversation: str
    wav: Path
    line: int  # its line in metadata.csv (1-based)


def _columns(first: list[str]) -> tuple[list[str] | None, bool]:
    """The header's column names, or None when the first line is a clip; and whether it was a header."""
    names = [c.strip().lower() for c in first]
    if names and names[0] == "id":
        return names, True
    return None, False


def read(folder: str | Path, speaker: int = 0, group: int = 4) -> list[Clip]:
    """The clips listed in ``folder/metadata.csv``, checked (module docstring), in file order.

    ``speaker``: the speaker id of clips without a ``speaker`` column; ``group``: clips per
    conversation without a ``conversation`` column."""
    folder = Path(folder)
    meta = folder / "metadata.csv"
    if not folder.is_dir():
        raise FolderError(f"{folder} is not a folder: expected a folder with metadata.csv and wavs/")
    if not meta.exists():
        raise FolderError(f"{meta} is missing: expected one line per clip, 'id|text' (LJSpeech layout)")
    if group < 1:
        raise FolderError(f"group must be at least 1 clip per conversation, got {group}")
    with meta.open(newline="", encoding="utf-8") as f:
        lines = [(n, row) for n, row in enumerate(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE), 1) if row]
    if not lines:
        raise FolderError(f"{meta} lists no clip: expected one line per clip, 'id|text'")
    names, header = _columns(lines[0][1])
    if header:
        unknown = set(names) - set(COLUMNS)
        if unknown or not {"id", "text"} <= set(names):
            raise FolderError(f"{meta} line 1: a header must name the columns id and text, and may name speaker "
                              f"and conversation; got {'|'.join(names)}")
        lines = lines[1:]
    clips, seen, count = [], set(), {}
    for n, row in lines:
        where = f"{meta} line {n}"
        if names is not None:
            if len(row) != len(names):
                raise FolderError(f"{where}: expected {len(names)} fields ({'|'.join(names)}), got {len(row)}")
            fields = dict(zip(names, (c.strip() for c in row), strict=True))
        elif len(row) in (2, 3):  # id|text, or LJSpeech's id|text|normalized text
            fields = {"id": row[0].strip(), "text": (row[2] if len(row) == 3 and row[2].strip() else row[1]).strip()}
        else:
            raise FolderError(f"{where}: expected 'id|text' (or LJSpeech's 'id|text|normalized text'), "
                              f"got {len(row)} fields")
        cid, text = fields["id"], fields["text"]
        if not cid:
            raise FolderError(f"{where}: the id is empty: expected the name of a wav in wavs/ (without .wav)")
        if cid in seen:
            raise FolderError(f"{where}: id {cid!r} is listed twice: each clip needs its own id")
        if not text:
            raise FolderError(f"{where}: clip {cid!r} has empty text: expected the words spoken in wavs/{cid}.wav")
        spk = fields.get("speaker", str(speaker))
        if not spk.isdigit() or not 0 <= int(spk) < N_SPEAKERS:
            raise FolderError(f"{where}: speaker {spk!r} is not a speaker id: expected 0..{N_SPEAKERS - 1}")
        wav = folder / "wavs" / f"{cid}.wav"
        if not wav.exists():
            raise FolderError(f"{where}: {wav} is missing: expected the recording of clip {cid!r} there")
        seen.add(cid)
        k = count[int(spk)] = count.get(int(spk), -1) + 1
        conv = fields.get("conversation") or f"s{spk}-{k // group:05d}"
        clips.append(Clip(cid, text, int(spk), conv, wav, n))
    return clips


def load_clip(clip: Clip, sr: int = A.SAMPLE_RATE) -> torch.Tensor:
    """A clip's audio ``(T,)`` at ``sr``, mono; a ``FolderError`` if unreadable, too short or silent."""
    try:
        x, _ = A.load(clip.wav, sr)
    except Exception as e:  # soundfile's errors name the format, not the folder
        raise FolderError(f"{clip.wav}: cannot read it as audio ({e}): expected a WAV file") from e
    if len(x) < MIN_SECONDS * sr:
        raise FolderError(f"{clip.wav}: {len(x) / sr:.2f} s is too short: expected at least {MIN_SECONDS} s of speech")
    if A.rms_db(x) < SILENCE_DB:
        raise FolderError(f"{clip.wav} is silent ({A.rms_db(x):.0f} dBFS): expected speech above {SILENCE_DB:.0f} dBFS")
    return x


def positions(clip: Clip, seconds: float, tokenizer: AnyTokenizer, frame_rate: float) -> int:
    """How many positions a clip takes in a window: its text tokens, audio frames and end of speech."""
    return len(tokenizer.encode(clip.text, clip.speaker)) + math.ceil(seconds * frame_rate) + 1


def content_key(clips: list[Clip]) -> str:
    """A short hash of the clips' ids, texts and files (size, modification time): a cache's name."""
    h = hashlib.sha256()
    for c in clips:
        st = c.wav.stat()
        h.update(f"{c.id}|{c.text}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


@torch.no_grad()
def turns(clips: list[Clip], codec: Codec, codec_path: str | Path, tokenizer: AnyTokenizer, max_len: int,
          cache: str | Path) -> list[Turn]:
    """The clips as ``dataset.Turn``s in conversation order; codes cached under the folder ``cache``.

    Every clip is loaded and checked (``load_clip``, and its length against ``max_len``) before the
    first is encoded."""
    sr = codec.cfg.sample_rate
    audio = {}
    for c in progress(clips, desc="checking clips"):
        x = load_clip(c, sr)
        need = positions(c, len(x) / sr, tokenizer, codec.cfg.frame_rate)
        if need > max_len:
            limit = (max_len - need + math.ceil(len(x) / sr * codec.cfg.frame_rate)) / codec.cfg.frame_rate
            raise FolderError(f"{c.wav}: {len(x) / sr:.1f} s with its text is {need} positions, more than the "
                              f"model's window of {max_len}: expected at most about {max(limit, 0):.1f} s")
        audio[c.id] = x

    def encode() -> dict[str, np.ndarray]:
        return {c.id: codec.encode(A.normalize_loudness(audio[c.id])[None])[0].numpy().astype(np.int16)
                for c in progress(clips, desc="encoding clips")}

    path = Path(cache) / f"codes-{content_key(clips)}-{checkpoint.fingerprint(codec_path)}.npz"
    codes = checkpoint.cached_npz(path, [c.id for c in clips], encode)
    rows, seen = [], {}
    for c in clips:  # a clip's turn number: its rank in its conversation, in file order
        seen[c.conversation] = seen.get(c.conversation, -1) + 1
        rows.append({"conversation": c.conversation, "turn": seen[c.conversation], "speaker": c.speaker,
                     "text": c.text, "wav": str(c.wav)})
    return tokenize_turns(rows, codes, tokenizer)


def split(clips: list[Clip], valid_share: float, seed: int = 0) -> tuple[list[Clip], list[Clip]]:
    """(train, valid) clips, whole conversations held out for validation (at least one when ``valid_share > 0``)."""
    convs = sorted({c.conversation for c in clips})
    rng = np.random.default_rng(seed)
    n_valid = max(1, round(valid_share * len(convs))) if valid_share > 0 else 0
    if n_valid >= len(convs):
        raise FolderError(f"{len(convs)} conversation(s) cannot spare {n_valid} for validation: record more clips "
                          f"or lower valid_share")
    held = set(rng.permutation(convs)[:n_valid].tolist())
    return [c for c in clips if c.conversation not in held], [c for c in clips if c.conversation in held]


def first_minutes(clips: list[Clip], minutes: float) -> list[Clip]:
    """The first clips, in file order, whose audio adds up to at most ``minutes``."""
    out, total = [], 0.0
    for c in clips:
        seconds = A.duration(c.wav)
        if total + seconds > minutes * 60:
            break
        out.append(c)
        total += seconds
    return out


# --- making a folder ----------------------------------------------------------------------------
def festival(text: str, voice: str = "ked_diphone") -> tuple[torch.Tensor, int]:
    """Speak ``text`` with a festival voice (Debian ``festvox-kdlpc16k`` gives ``ked_diphone``): ``(T,)``, sr."""
    exe = shutil.which("text2wave")
    if exe is None:
        raise RuntimeError("festival is not installed: `sudo apt-get install festival festvox-kdlpc16k`")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        src.write_text(text + "\n")
        res = subprocess.run([exe, "-eval", f"(voice_{voice})", str(src), "-o", str(out)],
                             capture_output=True, text=True)
        if res.returncode != 0 or not out.exists():
            raise RuntimeError(f"festival failed for voice {voice!r}: {res.stderr.strip()[-300:]}")
        return A.load(out, sr=None)


def write(folder: str | Path, clips: list[tuple[str, str, torch.Tensor, int]]) -> Path:
    """Write ``(id, text, audio, sr)`` clips as an LJSpeech-layout folder (each file atomically)."""
    folder = Path(folder)
    for cid, _, x, sr in clips:
        A.save(folder / "wavs" / f"{cid}.wav", x, sr)  # atomic
    checkpoint.atomic_write(folder / "metadata.csv", lambda tmp: Path(tmp).write_text(
        "".join(f"{cid}|{text}\n" for cid, text, _, _ in clips), encoding="utf-8"))
    return folder
