"""Listening widgets: pickers play the chosen clip (computed once, when first chosen); the playground
turns bad input into messages and builds a conversation turn by turn."""

import io

import pytest
import soundfile as sf
import torch

from csm_lib.generate import load_generator
from csm_lib.widgets import Playground, grid_picker, picker


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
