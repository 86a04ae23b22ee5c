"""Listening widgets: pickers play the chosen clip (computed once, when first chosen); the playground
turns bad input into messages and builds a conversation turn by turn."""

import io
import json

import pytest
import soundfile as sf
import torch

from csm_lib import data, outputs
from csm_lib import voice_loop as V
from csm_lib.generate import load_generator
from csm_lib.widgets import LISTEN_SILENCE_MS, Playground, grid_picker, picker


def seconds(value: bytes) -> float:
    x, sr = sf.read(io.BytesIO(value))
    return len(x) / sr


def tone(s: float) -> torch.Tensor:
    return 0.3 * torch.sin(torch.arange(int(16_000 * s)) / 16_000 * 2 * torch.pi * 220)


def test_picker_plays_the_chosen_clip_and_computes_each_once():
    calls = []

    def slow():
        calls.append(1)
        return tone(0.5)

    for control in ("buttons", "slider"):
        calls.clear()
        box = picker({"short": tone(0.2), "long": slow}, 16_000, control=control)
        choice, audio = box.children
        assert seconds(audio.value) == pytest.approx(0.2) and not calls  # the first option, the function not run
        choice.value = "long"
        assert seconds(audio.value) == pytest.approx(0.5) and len(calls) == 1
        choice.value = "short"
        choice.value = "long"
        assert len(calls) == 1  # cached
    with pytest.raises(ValueError, match="'buttons' or 'slider'"):
        picker({"a": tone(0.1)}, 16_000, control="knob")


def test_grid_picker_plays_the_chosen_cell():
    table = {f"pair {i}": {"A": tone(0.1 * (i + 1)), "B": tone(0.1 * (i + 4))} for i in range(3)}
    rows, columns, audio = grid_picker(table, 16_000).children
    assert seconds(audio.value) == pytest.approx(0.1)
    rows.value = "pair 2"
    assert seconds(audio.value) == pytest.approx(0.3)
    columns.value = "B"
    assert seconds(audio.value) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="same columns"):
        grid_picker({"x": {"A": tone(0.1)}, "y": {"B": tone(0.1)}}, 16_000)


@pytest.fixture(scope="module")
def playground() -> Playground:
    torch.set_num_threads(2)
    return Playground(load_generator())


@pytest.mark.parametrize("line, message", [("", "the line is empty"), ("   ", "the line is empty"),
                                           ("x" * 301, "at most 300")])
def test_playground_shows_bad_lines_as_messages(playground, line, message):
    playground.text.value = line
    playground.generate_button.click()
    assert message in playground.status.value and "⚠" in playground.status.value
    assert not playground.generate_button.disabled  # usable again


def test_playground_builds_a_conversation(playground):
    playground.clear()
    playground.add_flite_turn("are you coming to the market", speaker=0, voice="slt")
    assert len(playground.turns) == 1 and len(playground.history.children) == 1
    reply = playground.generate("yes I will bring the bags", speaker=1, seed=0, max_audio_length_ms=2000)
    assert reply["context_turns"] == 1 and reply["codes"].shape[0] == 8
    assert reply["duration_s"] == pytest.approx(reply["audio"].numel() / reply["sr"])
    assert len(playground.turns) == 2 and playground.turns[1]["source"] == "generated, seed 0"
    assert "first audio after" in playground.status.value
    alone = playground.generate("yes I will bring the bags", speaker=1, seed=0, max_audio_length_ms=2000,
                                use_context=False, join=False)
    assert alone["context_turns"] == 0 and len(playground.turns) == 2
    kw = dict(speaker=1, seed=0, max_audio_length_ms=2000, join=False)
    full = playground.generate("see you there", **kw)
    coarse = playground.generate("see you there", codebooks=2, **kw)
    assert torch.equal(coarse["codes"], full["codes"])  # the same codes, decoded from 2 codebooks
    assert coarse["audio"].shape == full["audio"].shape and not torch.allclose(coarse["audio"], full["audio"])


SPOKEN = "could you open the window please"


def recording() -> torch.Tensor:
    """A user's turn: flite's slt says ``SPOKEN`` (16 kHz)."""
    audio, _ = data.synthesize(SPOKEN, "slt", data.Style(f0_mean=170.0, f0_std=25.0, stretch=1.0))
    return torch.as_tensor(audio)


def test_playground_talk_hears_a_recording_and_the_other_speaker_answers(playground):
    playground.clear()
    playground.add_flite_turn("did you see the storm last night", speaker=1, voice="awb")
    got = playground.talk(recording(), speaker=0, seed=0, max_audio_length_ms=2000)
    assert len(set(got["heard"].split()) & set(SPOKEN.split())) >= 3, got["heard"]  # heard, roughly
    assert [t["segment"].speaker for t in playground.turns] == [1, 0, 1]
    you = playground.turns[1]
    assert you["source"] == "you, as heard" and you["segment"].text == got["heard"]
    assert len(you["audio"]) > len(recording())  # the recording and the silence the rule waited through
    reply = got["reply"]
    assert reply["speaker"] == 1 and reply["context_turns"] == 2 and reply["duration_s"] > 0 and reply["text"]
    with pytest.raises(ValueError, match="speaker 2"):
        playground.talk(recording(), speaker=2)


def test_microphone_messages_are_heard_like_a_recording(playground):
    """The browser's side, as the kernel receives it: start, then 80 ms chunks of float32 samples (the recording,
    then silence); the kernel tells the browser to stop once the end-of-turn rule fires, and the turn is heard
    (the same words as ``talk`` hears in the same chunks) and answered."""
    playground.clear()
    sent: list[dict] = []
    playground.mic.send = lambda content, buffers=None: sent.append(content)  # what the browser would receive
    x, n = torch.cat([recording(), torch.zeros(3 * V.SAMPLE_RATE)]), V.SAMPLE_RATE * V.CHUNK_MS // 1000
    playground.mic._received(None, {"kind": "start", "sample_rate": V.SAMPLE_RATE}, [])
    chunks = 0
    for i in range(0, len(x), n):
        playground.mic._received(None, {"kind": "chunk"}, [memoryview(x[i:i + n].numpy().tobytes())])
        chunks += 1
        if sent:
            break
    assert [m["kind"] for m in sent] == ["stop"] and "end of your turn" in sent[0]["why"]
    waited_s = chunks * V.CHUNK_MS / 1000 - V.end_of_speech(recording(), V.SAMPLE_RATE)
    assert LISTEN_SILENCE_MS / 1000 <= waited_s < LISTEN_SILENCE_MS / 1000 + 0.5, waited_s  # the rule's silence
    playground.mic._received(None, {"kind": "chunk"}, [memoryview(x[:n].numpy().tobytes())])  # late: ignored
    assert [t["source"] for t in playground.turns] == ["you, as heard", f"generated, seed {playground.seed.value}"]
    heard = playground.turns[0]["segment"].text
    playground.clear()
    assert playground.talk(recording(), speaker=0, max_audio_length_ms=1000)["heard"] == heard
    playground.mic._received(None, {"kind": "start", "sample_rate": 44_100}, [])
    assert sent[-1]["kind"] == "stop" and "44100 Hz" in sent[-1]["why"] and "16000 Hz" in playground.status.value
    playground.mic._received(None, {"kind": "error", "message": "Permission denied"}, [])
    assert "Permission denied" in playground.status.value and "⚠" in playground.status.value


def test_the_playground_listens_with_the_loops_measured_settings():
    """The talk mode's end-of-turn silence and the recogniser's gate are the ones ``make bench-loop`` chose
    (on valid turns) and measured: a reader talking to the playground gets the loop chapter 09 reports."""
    loop = json.loads((outputs.REPO / "results" / "voice_loop.json").read_text())
    assert LISTEN_SILENCE_MS == loop["rule"]["silence_ms"] == loop["end_of_turn"]["silence_ms_chosen"]
    assert V.ASR_TAIL_MS == loop["recognition"]["asr_tail"]["chosen_ms"]
