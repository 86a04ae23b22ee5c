"""The quality judges (chapter 10) on real flite speech: each check passes natural turns and fails the
control built to break it; thresholds come from calibration clips, not from the judged ones."""

import numpy as np
import pytest
import torch

from csm_lib import audio as A
from csm_lib import data
from csm_lib.judges.quality import SCORES, calibrate, features, separated, style_distance, summarize, turn_scores

LINES = ["the weather has been lovely all week", "we should walk along the river after lunch",
         "i left my umbrella at the station", "could you bring the blue folder tomorrow",
         "the garden looks brighter in the morning", "they built a small bridge over the stream"]
SLOW_LOW = data.Style(f0_mean=95.0, f0_std=9.0, stretch=1.2)
FAST_HIGH = data.Style(f0_mean=125.0, f0_std=22.0, stretch=0.85)


def speak(text: str, voice: str, style: data.Style | None = None) -> torch.Tensor:
    return A.normalize_loudness(torch.as_tensor(data.synthesize(text, voice, style)[0]))


@pytest.fixture(scope="module")
def judged():
    """Calibration on awb and slt clips; a target turn by awb (slow, low) with references."""
    calib = [features(speak(t, v, s), 16_000, t, asr=False)
             for t in LINES[:4] for v, s in (("awb", SLOW_LOW), ("slt", None), ("awb", FAST_HIGH))]
    cal = calibrate(calib)
    own = [features(speak(t, "awb", SLOW_LOW), 16_000, t, asr=False) for t in LINES[4:]]
    other = features(speak(LINES[0], "slt"), 16_000, LINES[0], asr=False)
    decoy = features(speak(LINES[1], "awb", FAST_HIGH), 16_000, LINES[1], asr=False)
    e = np.mean([f["embedding"] for f in own], axis=0)
    ref = {"own_embedding": e / np.linalg.norm(e), "other_embedding": other["embedding"],
           "own_style": np.nanmean([f["style"] for f in own], axis=0), "decoy_styles": [decoy["style"]]}
    return cal, ref


def test_features_of_natural_speech():
    text = LINES[0]
    f = features(speak(text, "slt"), 16_000, text)
    assert not f["empty"] and 1.0 < f["speech_s"] < f["seconds"]
    assert f["lead_s"] < 0.5 and f["end_db"] < -30 and f["voiced_share"] > 0.3
    assert f["half_sim"] > 0.6 and 2 < f["rate"] < 8 and f["f0_jump_st"] < 2
    assert sum(w in f["hyp"].split() for w in text.split()) >= 3  # pocketsphinx hears some of the words
    assert features(torch.zeros(16_000), 16_000, text)["empty"]  # silence: nothing to judge


def test_each_check_passes_the_speaker_and_fails_its_control(judged):
    cal, ref = judged
    text = LINES[2]
    gt = speak(text, "awb", SLOW_LOW)
    ok = turn_scores(features(gt, 16_000, text), ref, cal)
    assert all(ok[s] == 1.0 for s in SCORES), ok
    wrong = turn_scores(features(speak(text, "slt"), 16_000, text), ref, cal)
    assert wrong["character_consistency"] == 0.0 and wrong["sim"] < ok["sim"]
    styled = turn_scores(features(speak(text, "awb", FAST_HIGH), 16_000, text), ref, cal)
    assert styled["emotional_coherence"] == 0.0 and styled["character_consistency"] == 1.0
    cut = turn_scores(features(gt[: int(gt.numel() * 0.45)], 16_000, text), ref, cal)
    assert cut["turn_taking_fluency"] == 0.0  # stops mid-speech
    assert turn_scores(features(gt, 16_000, text), ref, cal, ended=False)["turn_taking_fluency"] == 0.0
    other = speak(text, "slt")
    spliced = torch.cat([gt[: gt.numel() // 2], other[other.numel() // 2:]])
    assert turn_scores(features(spliced, 16_000, text), ref, cal)["voice_consistency"] == 0.0
    noise = 0.1 * torch.randn(gt.numel(), generator=torch.Generator().manual_seed(0))
    assert turn_scores(features(noise, 16_000, text), ref, cal)["prosodic_naturalness"] == 0.0


def test_style_distance_and_summaries():
    assert style_distance(np.array([1.0, 2.0, np.nan]), np.array([0.0, 0.0, 5.0]), [1.0, 2.0, 1.0]) == 1.0
    assert np.isnan(style_distance(np.full(3, np.nan), np.zeros(3), [1.0] * 3))
    turn = dict.fromkeys(SCORES, 1.0) | {"sim": 0.9, "style_error": 0.5, "text": "a b", "hyp": "a b", "seconds": 2.0,
                                        "gt_seconds": 2.0, "ended": True}
    good = summarize([turn] * 20)
    bad = summarize([turn | dict.fromkeys(SCORES, 0.0) | {"hyp": "c"}] * 20)
    assert good["wer"] == 0 and bad["wer"] == 1 and good["n"] == 20 and good["duration_ratio_median"] == 1
    assert all(separated(good, bad, s) for s in SCORES) and not separated(good, good, "sim")


def _summary(level: float, width: float = 0.02) -> dict:
    keys = (*SCORES, "sim", "wer", "style_error", "ended")
    return {k: level for k in keys} | {f"{k}_ci95": [level - width, level + width] for k in keys} | \
        {"duration_ratio_median": 1.0, "duration_ratio_ci95": [0.9, 1.1]}


def test_seed_layout_puts_the_seeds_numbers_beside_ours():
    from csm_lib.bench.quality import seed_layout

    csm = _summary(0.9, 0.05)
    table = {"systems": {"ground_truth": {"summary": _summary(0.95)}, "csm": {"summary": csm}}}
    layout = seed_layout(table)
    assert layout.loc["character consistency", "seed"] == "0.88" and layout.loc["wer", "seed"] == ""
    assert layout.loc["voice consistency", "csm"] == "0.90 [0.85-0.95]"
