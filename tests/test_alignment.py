"""Free alignments from flite, checked against the audio and the tokenizer, and the training-only remedies."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from csm_lib import audio, checkpoint, data
from csm_lib.alignment import (
    AlignmentLosses,
    aligned_mass,
    attention_maps,
    frame_alignment,
    match_phones,
    turn_spans,
)
from csm_lib.dataset import tokenize_turns
from csm_lib.model import CSM, PRESETS
from csm_lib.text import corpus_tokenizer
from csm_lib.train import TrainConfig, load_data

ROOT = Path(__file__).resolve().parents[1]
CORPUS = data.CorpusConfig.for_hours(0.1, seed=5)  # the training tests' small corpus


@pytest.fixture(scope="module")
def corpus():
    folder = data.build(CORPUS)
    return folder, data.load_manifest(folder), data.alignments(folder), corpus_tokenizer(folder, kind="phones")


def test_psdur_leaves_the_audio_unchanged_and_ends_with_it(tmp_path):
    x, sr, phones = data.synthesize_with_phones("Hello, the rain stopped before noon.", "slt")
    y, _ = data.synthesize("Hello, the rain stopped before noon.", "slt")
    assert torch.equal(x, y)
    assert phones[0][0] == "pau" and phones[-1][0] == "pau"
    assert abs(phones[-1][1] - len(x) / sr) < 0.01  # the last pause ends with the audio


def test_substituted_added_and_dropped_phones_are_matched():
    tokens = ["<bos>", "[0]", "ey", "|", "k", "ae1", "t", ".", "<eos>"]  # "A cat." from the word lexicon
    positions = [2, 4, 5, 6]
    assert match_phones(["ax", "k", "ae", "t"], positions, tokens) == [2, 4, 5, 6]  # a -> ax in context
    assert match_phones(["ax", "k", "ae", "t", "s"], positions, tokens) == [2, 4, 5, 6, 6]  # an added phone
    assert match_phones(["k", "ae", "t"], positions, tokens) == [4, 5, 6]  # a dropped one


def test_pauses_read_the_punctuation_and_frames_take_the_phone_at_their_centre():
    tokens = ["<bos>", "[1]", "hh", "ay1", ",", "|", "b", "aa1", "b", ".", "<eos>"]
    phones = [("pau", 0.1), ("hh", 0.2), ("ay", 0.4), ("pau", 0.6), ("b", 0.7), ("aa", 0.9), ("b", 1.0),
              ("pau", 1.2)]
    got = frame_alignment(phones, tokens, 16)  # 1.28 s: the last frames outlast flite's phones
    assert [tokens[i] for i in got] == ["[1]", "hh", "ay1", "ay1", "ay1", ",", ",", "b", "b", "aa1", "aa1",
                                        "b", ".", ".", ".", "."]


def test_corpus_alignments_match_the_tokenizer_and_the_audio(corpus):
    folder, rows, phones, tok = corpus
    assert set(phones) == {Path(r["wav"]).stem for r in rows}
    raw = json.loads((folder / "phones.json").read_text())  # as flite printed them, written by the build
    same = total = 0
    quiet, loud = [], []
    for r in rows[:60]:
        p = phones[Path(r["wav"]).stem]
        x, sr = audio.load(r["wav"])
        said_end = data.parse_phones(raw[Path(r["wav"]).stem])[-1][1]  # flite's own end time vs its audio:
        assert abs(said_end - len(x) / sr) < (0.06 * said_end if r["voice"] == "kal16" else 0.01), r["wav"]
        ids = tok.encode(r["text"], r["speaker"])
        tokens = [tok.tokens[i] for i in ids]
        said = [ph for ph, _ in p if ph != "pau"]
        where = match_phones(said, [i for i, t in enumerate(tokens) if t[0].isalpha() and t != "<unk>"], tokens)
        same += sum(tokens[w].rstrip("012") == s for w, s in zip(where, said, strict=True))
        total += len(said)
        start = 0.0
        for ph, end in p:  # RMS of each segment's middle: flite's pauses are silent
            a, b = int((start + 0.3 * (end - start)) * sr), int((end - 0.3 * (end - start)) * sr)
            if b - a > 160:
                (quiet if ph == "pau" else loud).append(float(x[a:b].pow(2).mean().sqrt()))
            start = end
    assert same / total > 0.9  # the word lexicon and flite in context mostly agree
    assert np.median(quiet) < 0.05 * np.median(loud)


def test_dataset_alignment_points_each_audio_frame_at_its_turns_text(corpus):
    folder, rows, phones, tok = corpus
    codes = {Path(r["wav"]).stem: np.zeros((4, int(np.ceil(r["duration"] / 0.08))), np.int16) for r in rows[:20]}
    turns = tokenize_turns(rows[:20], codes, tok, phones)
    for t in turns:
        n_text = int(t.mask[:, -1].sum())
        assert (t.align[:n_text] == -1).all() and (t.align[n_text:] >= 1).all()
        assert (t.align[n_text:] < n_text).all() and t.align[-1] == n_text - 1  # end of speech reads <eos>
        assert torch.equal(t.align[n_text:].sort().values, t.align[n_text:])  # monotonic
        assert turn_spans(t.mask) == [(0, n_text, len(t.frames))]


def test_regrouped_windows_let_a_speaker_talk_twice_and_keep_their_alignment():
    cfg = TrainConfig(preset="tiny", hours=0.1, corpus_seed=5, max_len=400, text_input="phones", align="phone")
    train_w, _, mcfg, _ = load_data(cfg)
    g = torch.Generator().manual_seed(0)
    twice = 0
    for step in range(20):
        frames, mask, align = train_w.training_batch(train_w.step_indices(step, 4, 0), 1.0, g)
        for b in range(len(frames)):
            speakers = [int(frames[b, t0 + 1, -1]) for t0, _, _ in turn_spans(mask[b])]
            twice += any(a == c for a, c in zip(speakers, speakers[1:], strict=False))
            audio_pos = mask[b, :, :-1].all(-1).nonzero()[:, 0]
            pos = align[b, audio_pos]
            assert (pos >= 0).all() and (pos < audio_pos).all() and mask[b, pos, -1].all()
    assert twice > 10
    plain = train_w.training_batch([0, 1], 0.0)
    assert torch.equal(plain[0], train_w.batch([0, 1])[0])


def test_alignment_losses_are_finite_and_guided_attention_is_a_distribution():
    cfg = PRESETS["tiny"]
    model = CSM(cfg).train()
    losses = AlignmentLosses(cfg.backbone.dim, cfg.text_vocab_size, ("phone", "ctc", "guided"), guided_layer=1)
    losses.attach(model)
    K = cfg.n_codebooks
    text = [1, 3, 20, 21, 22, 23, 2]
    F_ = 9
    frames = torch.zeros(1, len(text) + F_ + 1, K + 1, dtype=torch.long)
    mask = torch.zeros_like(frames, dtype=torch.bool)
    frames[0, : len(text), -1], mask[0, : len(text), -1] = torch.tensor(text), True
    frames[0, len(text):, :K], mask[0, len(text):, :K] = torch.randint(1, 60, (F_ + 1, K)), True
    align = torch.tensor([[-1] * len(text) + [2, 2, 3, 3, 4, 4, 5, 5, 5, 6]])
    out = model(frames, mask)
    got = losses(out["hidden"], frames, mask, align, out["targets"])
    assert set(got) == {"phone", "ctc", "guided"} and all(torch.isfinite(v) for v in got.values())
    sum(got.values()).backward()
    assert model.backbone.layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0  # guided reaches the layer


def test_training_with_remedies_resumes_and_ships_a_plain_csm(tmp_path):
    base = ["--preset=tiny", "--hours=0.1", "--corpus_seed=5", "--batch=4", "--max_len=192", "--eval_every=0",
            "--log_every=1", "--threads=1", "--lr=3e-3", "--warmup=2", "--text_input=phones",
            "--align=phone+ctc+guided", "--regroup=0.5", "--ckpt_every=2", f"--out={tmp_path}"]
    env = os.environ | {"CSM_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    for args in (["--steps=4", "--stop_step=2"], ["--steps=4", "--resume=true"]):
        p = subprocess.run([sys.executable, "-m", "csm_lib.train", *base, *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].endswith("phone_loss,ctc_loss,guided_loss") and len(log) == 5
    tensors, meta = checkpoint.load(tmp_path / "model")
    assert meta["steps"] == 4 and set(tensors) == set(CSM(PRESETS["tiny"]).state_dict())  # no alignment head
    state, _ = checkpoint.load(tmp_path / (tmp_path / "latest").read_text().strip())
    assert {"extra.phone_head.weight", "extra.ctc_head.weight"} <= set(state)


def test_attention_maps_are_distributions_and_aligned_mass_scores_a_reading_head():
    cfg = PRESETS["tiny"]
    model = CSM(cfg).eval()
    K, text, n_frames = cfg.n_codebooks, [1, 3, 20, 21, 22, 2], 7
    frames = torch.zeros(1, len(text) + n_frames, K + 1, dtype=torch.long)
    mask = torch.zeros_like(frames, dtype=torch.bool)
    frames[0, : len(text), -1], mask[0, : len(text), -1] = torch.tensor(text), True
    frames[0, len(text):, :K], mask[0, len(text):, :K] = torch.randint(1, 60, (n_frames, K)), True
    align = torch.tensor([[-1] * len(text) + [2, 2, 3, 3, 4, 4, 5]])
    maps = attention_maps(model, frames, mask)
    assert len(maps) == cfg.backbone.n_layers and maps[0].shape == (1, cfg.backbone.n_heads, 13, 13)
    assert torch.allclose(maps[0].sum(-1), torch.ones(1, cfg.backbone.n_heads, 13))
    mass = aligned_mass(maps[0], align, mask)
    assert mass.shape == (cfg.backbone.n_heads,) and ((mass >= 0) & (mass <= 1)).all()
    reading = torch.zeros(1, 2, 13, 13)  # head 0 reads the aligned phone of the next frame, head 1 the first audio
    for t in range(len(text) - 1, 12):
        reading[0, 0, t, align[0, t + 1]] = 1
        reading[0, 1, t, len(text)] = 1
    assert aligned_mass(reading, align, mask).tolist() == [1.0, 0.0]


def test_layouts_put_the_speakers_own_turn_first_last_or_alone():
    from csm_lib.judges.evaluate import LAYOUTS, layout_context

    earlier = [{"speaker": s, "wav": f"t{i}"} for i, s in enumerate((0, 1, 0, 1))]  # turns 0-3; turn 4 is speaker 0's
    row = {"speaker": 0, "wav": "t4"}
    got = {name: [r["wav"] for r in layout_context(row, earlier, name)] for name in LAYOUTS}
    assert got == {"corpus": ["t0", "t1", "t2", "t3"], "own_first": ["t2", "t3"], "own_last": ["t3", "t2"],
                   "own_only": ["t2"]}
