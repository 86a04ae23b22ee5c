"""The voice loop (``csm_lib/voice_loop.py``): the end-of-turn rule on synthetic audio and on flite's speech,
pauses that do not cut in, streamed recognition against whole-utterance recognition, and the timeline of one
real turn (the reference CSM, the text LM) in order. The simulated clock throughout: no timed assertion."""

from __future__ import annotations

import math

import pytest
import torch

from csm_lib import audio as A
from csm_lib import data, metrics
from csm_lib import voice_loop as V
from csm_lib.generate import REFERENCE_MODEL

SR = V.SAMPLE_RATE
CHUNK_S = V.CHUNK_MS / 1000


def tone(seconds: float, hz: float = 220.0) -> torch.Tensor:
    t = torch.arange(round(seconds * SR)) / SR
    return 0.1 * torch.sin(2 * math.pi * hz * t)


def silence(seconds: float) -> torch.Tensor:
    return torch.zeros(round(seconds * SR))


class Deaf:
    """A recogniser that hears nothing and counts what it is fed (the rule's tests need none)."""

    def start(self) -> None:
        self.fed = 0

    def feed(self, chunk: torch.Tensor) -> None:
        self.fed += len(chunk)

    def finish(self) -> str:
        return ""


def heard(audio: torch.Tensor, silence_ms: float, detector=None, **kw) -> V.Heard:
    return V.listen(audio, detector or V.EnergyDetector(), Deaf(), V.EndOfTurn(silence_ms=silence_ms),
                    V.SimulatedClock(), **kw)


@pytest.fixture(scope="module")
def sentence() -> torch.Tensor:
    x, _, _ = data.synthesize_with_phones("They went slowly forward in the mud.", "awb")
    return A.normalize_loudness(x)


# ----------------------------------------------------------------------------- the end-of-turn rule


@pytest.mark.parametrize("silence_ms", [200, 400, 700])
def test_the_turn_ends_after_the_silence_threshold_within_a_chunk(silence_ms):
    """1 s of tone, then silence: the decision comes with the chunk after ``silence_ms`` of silence (the energy
    detector marks the 32 ms window that straddles the tone's end as speech, so at most one window more)."""
    h = heard(torch.cat([tone(1.0), silence(2.0)]), silence_ms)
    assert h.decided
    late = h.heard_s - 1.0 - silence_ms / 1000
    assert 0 <= late < CHUNK_S + 0.032, late
    assert V.end_of_speech(torch.cat([tone(1.0), silence(2.0)]), SR) == pytest.approx(1.0, abs=0.01)


def test_no_decision_before_any_speech():
    h = heard(silence(2.0), 200, tail_ms=0)
    assert not h.decided


@pytest.mark.parametrize("pause_s,silence_ms,cuts_in", [(0.3, 400, False), (0.6, 400, True), (0.15, 250, False)])
def test_a_pause_shorter_than_the_threshold_does_not_cut_in(pause_s, silence_ms, cuts_in):
    x = torch.cat([tone(0.5), silence(pause_s), tone(0.5)])
    h = heard(x, silence_ms)
    speech_ends = len(x) / SR
    assert (h.heard_s < speech_ends) == cuts_in, h.heard_s


def test_the_replayed_rule_decides_where_the_live_loop_does():
    """The trade-off sweep replays the rule over window probabilities; it must decide as the loop did."""
    x = torch.cat([tone(0.7), silence(0.2), tone(0.4), silence(1.5)])
    det = V.EnergyDetector()
    for s in (150, 300, 500):
        live = heard(x, s)
        w = V.EndOfTurn(silence_ms=s).first_end(V.window_probs(x, det))
        assert V.decision_time(w) == pytest.approx(live.heard_s), s


def test_silero_ends_a_flite_turn_after_the_threshold(sentence):
    """On speech: after the threshold, within a chunk and silero's own hangover (~60 ms on flite's voices)."""
    x = torch.cat([sentence, silence(1.5)])
    eos = V.end_of_speech(sentence, SR)
    for s in (200, 500):
        h = heard(x, s, V.SileroDetector())
        assert h.decided
        late = h.heard_s - eos - s / 1000
        assert 0 <= late < CHUNK_S + 0.15, (s, late)


def test_silero_does_not_cut_in_on_a_pause_shorter_than_the_threshold(sentence):
    end = V.end_of_speech(sentence, SR)
    x = torch.cat([sentence[: round(end * SR)], silence(0.25), sentence])
    eos = V.end_of_speech(x, SR)
    assert not heard(x, 500, V.SileroDetector()).heard_s < eos
    assert heard(x, 100, V.SileroDetector()).heard_s < eos  # a threshold under the pause does cut in


def test_the_recogniser_is_gated_by_silence():
    """Silence waiting for the rule is not fed to the recogniser beyond ``asr_tail_ms``."""
    x = torch.cat([tone(1.0), silence(2.0)])
    rec = Deaf()
    V.listen(x, V.EnergyDetector(), rec, V.EndOfTurn(silence_ms=1000), V.SimulatedClock(), asr_tail_ms=160)
    assert rec.fed / SR <= 1.0 + 0.16 + 2 * CHUNK_S
    V.listen(x, V.EnergyDetector(), rec, V.EndOfTurn(silence_ms=1000), V.SimulatedClock(), asr_tail_ms=None)
    assert rec.fed / SR >= 2.0


# ----------------------------------------------------------------------------- the first phrase


def test_phrase_cut():
    cut = V.PhraseCut(min_words=3, max_words=6)

    def first(text: str) -> str:
        return next(text[: i + 1] for i in range(len(text)) if cut.done(text[: i + 1]))

    assert first("Yes. And then more.") == "Yes."
    assert first("Well, I think so, yes.") == "Well, I think so,"  # a comma counts after three words
    assert first("one two three four five six seven eight") == "one two three four five six "
    assert not any(cut.done("Hi, you"[: i + 1]) for i in range(7))
    assert V.PhraseCut(max_words=None).done("one two three four five six seven eight ") is False


# ----------------------------------------------------------------------------- recognition, streamed


def test_streamed_recognition_matches_whole_utterance_recognition(sentence):
    """Fed in 80 ms chunks with live cepstral normalisation (calibrated on other flite sentences) and no second
    pass, pocketsphinx hears a flite sentence as well as whole-utterance recognition does, or nearly."""
    others = [A.normalize_loudness(data.synthesize(t, v)[0]) for t, v in
              [("The party recruited many new members.", "slt"), ("Do you really think so?", "rms"),
               ("A criminal waste of talent.", "kal16"), ("How do you utilize this tool?", "awb")]]
    cmninit = V.calibrate_cmn(others)
    assert len(cmninit.split(",")) == 13
    ref = "They went slowly forward in the mud."
    whole = metrics.Transcriber()(sentence, SR)
    rec = V.StreamingRecognizer(cmninit)
    streamed = V.listen(torch.cat([sentence, silence(1.0)]), V.SileroDetector(), rec, V.EndOfTurn(silence_ms=300),
                        V.SimulatedClock()).text
    assert streamed == rec(sentence)  # the same words fed by the loop or all at once, chunk by chunk
    assert metrics.wer([ref], [streamed]) <= metrics.wer([ref], [whole]) + 0.15, (streamed, whole)


# ----------------------------------------------------------------------------- one real turn


@pytest.mark.skipif(not REFERENCE_MODEL.exists(), reason="no reference checkpoints")
def test_the_timeline_of_a_real_turn_is_ordered(sentence):
    from csm_lib import text as Tx
    from csm_lib.baselines.train import load_text_lm
    from csm_lib.bench.common import conversation_with
    from csm_lib.bench.latency import CHECKPOINTS, speakers
    from csm_lib.bench.loop import CHUNKING, lm_writer
    from csm_lib.generate import Segment, load_generator

    gen = load_generator()
    lm, tok, _ = load_text_lm(CHECKPOINTS["textlm"])
    fns = speakers(gen, {"valle": None, "audiolm": None}, CHUNKING)
    ctx = [Segment(1, "Did you see the weather report?", A.normalize_loudness(data.synthesize(
        "Did you see the weather report?", "slt")[0]))]
    conv = conversation_with(gen, ctx)
    csm = V.ReplySystem("csm", "phrase", lambda text, user: fns["csm"](text, 1, [*ctx, user], 6, 0, conv=conv))
    writer = lm_writer(lm, tok, 0, 1)
    chars: list[str] = []
    writer("they went slowly forward in the mud", lambda c: chars.append(c) and False)
    Tx.learn(["".join(chars)])  # the reply's words looked up before the turn, as the benchmark does
    line, reply = V.take_turn(torch.cat([silence(0.2), sentence]), 0, csm, writer, V.SileroDetector(),
                              V.StreamingRecognizer(), V.EndOfTurn(silence_ms=300), V.PhraseCut(),
                              V.SimulatedClock())
    assert line.decided and not line.cut_in
    assert 0 <= line.decision_ms <= line.hypothesis_ms <= line.phrase_ms <= line.text_ms <= line.first_audio_ms
    assert line.ordered()
    assert line.decision_ms >= 300  # the rule waited for its silence, counted from the audio's end of speech
    assert line.heard and line.phrase and reply.numel() > 0
    assert [t.speaker for t in conv.turns] == [1, 0, 1]  # the user's turn and the reply joined the conversation
