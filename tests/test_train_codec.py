"""The codec training script's pieces: config overrides, schedule, crops, phone labels."""

import numpy as np
import pytest
import torch

from csm_lib import data, semantic
from csm_lib.train_codec import Clips, TrainConfig, lr_at, parse_overrides


def test_overrides_are_typed_and_unknown_fields_rejected():
    cfg = parse_overrides(TrainConfig(), ["--batch=4", "--lr=3e-4", "--preset=tiny", "--device=cpu"])
    assert (cfg.batch, cfg.lr, cfg.preset) == (4, 3e-4, "tiny")
    with pytest.raises(ValueError, match="unknown option --batchsize"):
        parse_overrides(TrainConfig(), ["--batchsize=4"])
    with pytest.raises(ValueError, match="expected --field=value"):
        parse_overrides(TrainConfig(), ["--batch", "4"])


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    cfg = TrainConfig(lr=1e-3, warmup=10)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:-1], lrs[10:], strict=True))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_crops_start_on_a_frame_and_keep_labels_aligned(tmp_path):
    rows = [{"wav": str(tmp_path / f"t{i}.wav"), "duration": 1.0} for i in range(2)]
    for i, r in enumerate(rows):
        x = torch.arange(16_000, dtype=torch.float32) / 16_000 + i  # sample value tells its position
        data.audio.save(r["wav"], x.clamp(max=0.99) if i == 0 else x * 0, 16_000)
    labels = {f"t{i}": np.arange(100) % 40 for i in range(2)}
    clips = Clips(rows, labels)
    x, y = clips.batch(16, 3200, torch.Generator().manual_seed(0))
    assert x.shape == (16, 3200) and y.shape == (16, 20)
    for xi, yi in zip(x, y, strict=True):
        if xi.abs().sum() == 0:
            continue
        start = int(round(float(xi[0]) * 16_000))  # where the crop began, in samples
        assert start % semantic.FRAME_HOP == 0
        assert int(yi[0]) == (start // semantic.FRAME_HOP) % 40


def test_phone_labels_follow_the_words():
    x, _ = data.synthesize("She sells sea shells.", "slt")
    labels = semantic.phone_labels(x, "She sells sea shells.")
    assert len(labels) == -(-len(x) // semantic.FRAME_HOP)
    found = {semantic.PHONES[i] for i in labels if i >= 0}
    assert {"SH", "IY", "S", "EH", "L", "Z"} <= found
    assert labels[0] == semantic.PHONE_ID["SIL"] or labels[0] == semantic.IGNORE
    with pytest.raises(ValueError, match=r"\(T,\)"):
        semantic.phone_labels(x[None], "hi")
