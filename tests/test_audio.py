import math

import numpy as np
import pytest
import torch

from csm_lib import audio as A


def tone(sr=16_000, seconds=0.5, hz=220.0, amp=0.3):
    t = torch.arange(int(sr * seconds)) / sr
    return amp * torch.sin(2 * math.pi * hz * t)


def test_save_load_roundtrip(tmp_path):
    x = tone()
    path = A.save(tmp_path / "a" / "t.wav", x, 16_000)
    y, sr = A.load(path)
    assert sr == 16_000 and y.shape == x.shape and y.dtype == torch.float32
    assert (y - x).abs().max() < 1e-3  # 16-bit PCM quantisation
    assert not list(tmp_path.rglob("*.tmp"))  # atomic write leaves no temp files


def test_load_resamples_and_keeps_frequency(tmp_path):
    A.save(tmp_path / "t.wav", tone(sr=16_000, hz=440.0), 16_000)
    y, sr = A.load(tmp_path / "t.wav", sr=24_000)
    assert sr == 24_000 and abs(len(y) - 12_000) <= 1
    spectrum = np.abs(np.fft.rfft(y.numpy()))
    assert abs(np.argmax(spectrum) * 24_000 / len(y) - 440.0) < 4.0


def test_bad_inputs_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no audio file"):
        A.load(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match=r"mono audio of shape \(T,\)"):
        A.save(tmp_path / "x.wav", torch.zeros(2, 100), 16_000)


def test_normalize_loudness_hits_target_without_clipping():
    y = A.normalize_loudness(tone(amp=0.01), target_db=-23.0)
    assert abs(A.rms_db(y) - (-23.0)) < 0.01
    spiky = torch.zeros(16_000)
    spiky[100] = 0.5
    assert A.normalize_loudness(spiky, target_db=-3.0).abs().max() <= 0.99 + 1e-6


def test_mel_spectrogram_shape_and_peak_band():
    mel = A.mel_spectrogram(torch.stack([tone(hz=300.0), tone(hz=3000.0)]), n_mels=80)
    assert mel.shape == (2, 80, 51)  # 0.5 s at a 10 ms hop, centred frames
    low, high = mel.mean(-1).argmax(-1).tolist()
    assert low < high
