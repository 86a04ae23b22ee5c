"""The semantic teacher: which phone is being spoken in each 10 ms frame, found offline.

Mimi makes its first codebook "semantic" by distilling WavLM features into it. We cannot
download WavLM, but we know what every corpus turn *says*: pocketsphinx's forced aligner
(general English acoustic model and CMU dictionary, both inside the PyPI wheel) places the
text's phones in time. The codec is then trained so that a linear read-out of codebook 0
predicts these phones: codebook 0 must carry *what is said*, which is the property the seed
claims for its semantic codes. Phone labels are speaker independent, unlike mel features.

Frames are 10 ms (pocketsphinx's frame rate, equal to the codec's analysis hop at 16 kHz).

Explained in chapter 03 (``notebooks/03_codec.ipynb``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from csm_lib.metrics import JUDGE_SR, normalize_text

# the 39 ARPAbet phones of the CMU dictionary, plus silence
PHONES = ["SIL", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G",
          "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH",
          "UH", "UW", "V", "W", "Y", "Z", "ZH"]
PHONE_ID = {p: i for i, p in enumerate(PHONES)}
IGNORE = -100  # label for frames the aligner could not place (PyTorch's cross-entropy default)
FRAME_HOP = 160  # samples per 10 ms frame at 16 kHz


@functools.cache
def _aligner():
    from pocketsphinx import Decoder

    return Decoder(cmn="batch", loglevel="FATAL")


def phone_labels(audio: torch.Tensor, text: str) -> np.ndarray:
    """Phone id per 10 ms frame of 16 kHz mono ``(T,)`` audio: int64 ``(ceil(T / 160),)``.

    Two passes of pocketsphinx: word alignment to the text, then phone alignment inside the
    words. Frames the aligner leaves out (or a failed alignment) are labelled ``IGNORE``.
    """
    if audio.dim() != 1:
        raise ValueError(f"phone_labels expects mono (T,) audio, got {tuple(audio.shape)}")
    n_frames = -(-audio.numel() // FRAME_HOP)
    labels = np.full(n_frames, IGNORE, dtype=np.int64)
    words = normalize_text(text)
    if not words:
        return labels
    pcm = (audio.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
    d = _aligner()
    try:
        d.set_align_text(words)
        for second_pass in (False, True):
            if second_pass:
                d.set_alignment()
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
        alignment = d.get_alignment()
    except (RuntimeError, ValueError):  # a word missing from the dictionary, or no path found
        return labels
    if alignment is None:
        return labels
    for word in alignment:
        for phone in word:
            pid = PHONE_ID.get(phone.name, IGNORE)
            labels[phone.start: phone.start + phone.duration] = pid
    return labels


assert JUDGE_SR == FRAME_HOP * 100  # 10 ms frames at the judges' 16 kHz
