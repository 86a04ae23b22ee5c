"""Reading a folder of recordings (csm_lib/voice_folder.py): what it accepts, and a clear error for each bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch

from csm_lib import audio as A
from csm_lib import voice_folder as V
from csm_lib.generate import REFERENCE_MODEL, load_codec, tokenizer_path
from csm_lib.text import load_tokenizer

SR = 22_050  # not the corpus rate: the loader resamples


def tone(seconds: float, sr: int = SR, amp: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return (amp * torch.sin(2 * torch.pi * 220 * t)).float()


def make(folder: Path, lines: list[str], audio: dict[str, torch.Tensor] | None = None) -> Path:
    (folder / "wavs").mkdir(parents=True, exist_ok=True)
    (folder / "metadata.csv").write_text("".join(line + "\n" for line in lines))
    for cid, x in (audio or {}).items():
        A.save(folder / "wavs" / f"{cid}.wav", x, SR)
    return folder


def test_reads_two_columns_ljspeech_and_a_header(tmp_path):
    a = make(tmp_path / "a", ["x1|Hello there.", "x2|How are you?"], {"x1": tone(1), "x2": tone(1)})
    clips = V.read(a, speaker=2, group=4)
    assert [(c.id, c.text, c.speaker) for c in clips] == [("x1", "Hello there.", 2), ("x2", "How are you?", 2)]
    assert clips[0].conversation == clips[1].conversation  # grouped: one conversation of consecutive clips
    lj = make(tmp_path / "lj", ["LJ1|Dr. Smith, 1 cat.|Doctor Smith, one cat."], {"LJ1": tone(1)})
    assert V.read(lj)[0].text == "Doctor Smith, one cat."  # LJSpeech's normalized column
    h = make(tmp_path / "h", ["id|speaker|text|conversation", "a|3|One two three.|c1", "b|4|Four five.|c1",
                              "c|3|Six.|c2"], {k: tone(1) for k in "abc"})
    clips = V.read(h)
    assert [(c.speaker, c.conversation) for c in clips] == [(3, "c1"), (4, "c1"), (3, "c2")]


def test_group_makes_conversations_of_consecutive_clips(tmp_path):
    ids = [f"x{i}" for i in range(6)]
    f = make(tmp_path / "g", [f"{i}|Words number {n}." for n, i in enumerate(ids)], {i: tone(0.5) for i in ids})
    assert [c.conversation for c in V.read(f, group=4)] == ["s0-00000"] * 4 + ["s0-00001"] * 2
    train, valid = V.split(V.read(f, group=2), valid_share=0.3, seed=0)
    assert len(valid) == 2 and {c.conversation for c in train}.isdisjoint({c.conversation for c in valid})


@pytest.mark.parametrize("lines, audio, message", [
    (None, {}, "metadata.csv is missing"),
    (["x1"], {"x1": 1}, "expected 'id|text'"),
    (["x1|a|b|c"], {"x1": 1}, "got 4 fields"),
    (["x1|   "], {"x1": 1}, "has empty text"),
    (["x1|Hello.", "x1|Again."], {"x1": 1}, "is listed twice"),
    (["x1|Hello.", "x2|Missing."], {"x1": 1}, "x2.wav is missing"),
    (["id|text|speaker", "x1|Hello.|nine"], {"x1": 1}, "is not a speaker id"),
    (["id|text|speaker", "x1|Hello.|8"], {"x1": 1}, "expected 0..7"),
    (["id|words", "x1|Hello."], {"x1": 1}, "must name the columns id and text"),
    (["|Hello."], {}, "the id is empty"),
])
def test_bad_metadata_is_named(tmp_path, lines, audio, message):
    folder = tmp_path / "bad"
    if lines is None:
        (folder / "wavs").mkdir(parents=True)
    else:
        make(folder, lines, {k: tone(1) for k in audio})
    with pytest.raises(V.FolderError, match=message) as e:
        V.read(folder)
    assert str(folder) in str(e.value)  # the error names the file


def test_not_a_folder(tmp_path):
    with pytest.raises(V.FolderError, match="is not a folder"):
        V.read(tmp_path / "nowhere")


@pytest.mark.parametrize("audio, message", [
    (tone(0.1), "too short"),
    (torch.zeros(SR), "is silent"),
    (tone(1.0, amp=1e-5), "is silent"),
])
def test_bad_audio_is_named(tmp_path, audio, message):
    f = make(tmp_path / "a", ["x1|Hello there."], {"x1": audio})
    with pytest.raises(V.FolderError, match=message) as e:
        V.load_clip(V.read(f)[0])
    assert "x1.wav" in str(e.value)


def test_unreadable_audio(tmp_path):
    f = make(tmp_path / "a", ["x1|Hello there."])
    (f / "wavs" / "x1.wav").write_bytes(b"not a wav at all" * 10)
    with pytest.raises(V.FolderError, match="cannot read it as audio"):
        V.load_clip(V.read(f)[0])


def test_stereo_any_rate_is_mono_16k(tmp_path):
    f = make(tmp_path / "s", ["x1|Hello there."])
    import soundfile as sf
    x = tone(1.0, 44_100).numpy()
    sf.write(f / "wavs" / "x1.wav", np.stack([x, -x * 0.5], axis=1), 44_100)
    y = V.load_clip(V.read(f)[0])
    assert y.dim() == 1 and abs(len(y) - A.SAMPLE_RATE) <= 1


@pytest.fixture(scope="module")
def reference_parts():
    codec, _ = load_codec("checkpoints/codec_reference.safetensors")
    return codec, load_tokenizer(tokenizer_path(REFERENCE_MODEL))


def test_too_long_is_caught_before_encoding(tmp_path, reference_parts):
    codec, tok = reference_parts
    f = make(tmp_path / "long", ["a|Short.", "b|Too long for the window."], {"a": tone(1), "b": tone(45)})
    with pytest.raises(V.FolderError, match=r"b\.wav: 45\.0 s .* more than the model's window of 512"):
        V.turns(V.read(f), codec, "checkpoints/codec_reference.safetensors", tok, 512, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing was encoded


def test_turns_are_training_turns_and_cached(tmp_path, reference_parts):
    codec, tok = reference_parts
    f = make(tmp_path / "ok", ["a|Hello there.", "b|How are you today?", "c|Fine, thanks."],
             {"a": tone(1.0), "b": tone(1.6), "c": tone(0.8)})
    clips = V.read(f, speaker=2, group=2)
    turns = V.turns(clips, codec, "checkpoints/codec_reference.safetensors", tok, 512, tmp_path / "cache")
    assert [(t.conversation, t.turn, t.speaker) for t in turns] == [("s2-00000", 0, 2), ("s2-00000", 1, 2),
                                                                     ("s2-00001", 0, 2)]
    n_text = len(tok.encode("How are you today?", 2))
    assert turns[1].frames.shape[0] == n_text + round(1.6 * codec.cfg.frame_rate) + 1  # text, frames, end
    assert int(turns[1].frames[1, -1]) == tok.speaker_token(2)  # [speaker] after <bos>
    assert len(list((tmp_path / "cache").glob("codes-*.npz"))) == 1
    again = V.turns(clips, codec, "checkpoints/codec_reference.safetensors", tok, 512, tmp_path / "cache")
    assert all(torch.equal(a.frames, b.frames) for a, b in zip(turns, again, strict=True))
