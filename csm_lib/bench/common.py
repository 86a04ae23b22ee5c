"""What the benchmarks share: thread counts and medians, a stream timed to its first audio, the conversation
chapters 08 and 09 speak after, the hardware the cost models assume, and the training batch of chapters 05 and 07.

Every benchmark module of ``csm_lib.bench`` imports what it needs from here; this module imports no benchmark.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch

from csm_lib.generate import REFERENCE_CODEC, Conversation, Generator, Segment
from csm_lib.train import TrainConfig, load_data


@contextmanager
def threads_set(n: int):
    """``with threads_set(n):`` run with ``n`` torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def ms(times: list[float]) -> float:
    """``median_ms``, rounded to microseconds for the JSON."""
    return round(median_ms(times), 3)


# ----------------------------------------------------------------------------- streams


def first_audio(stream) -> tuple[float, float, int]:
    """Consume an audio stream: seconds to its first chunk, to its end, and its samples."""
    t0 = time.perf_counter()
    first, n = None, 0
    for chunk in stream:
        if first is None and chunk.numel():
            first = time.perf_counter() - t0
        n += chunk.numel()
    return first, time.perf_counter() - t0, n


def conversation_with(gen: Generator, context: list[Segment]) -> Conversation:
    conv = Conversation(gen)
    for seg in context:
        conv.add(seg)
    return conv


# ----------------------------------------------------------------------------- what chapters 08 and 09 speak

# a reply and a conversation to give it: everyday sentences, spoken by flite (speaker 0: awb, 1: slt)
REPLY = "I think we should leave before the rain starts, because the road gets muddy after dark."
TURNS = [
    "Did you see the weather report for tonight?",
    "Yes, they said it would rain from about six.",
    "We still have to pack the car and feed the dog.",
    "I can do the dog if you start on the bags.",
    "Fine, but the blue bag has a broken zip.",
    "Then take the old one from the cupboard upstairs.",
    "Where did you put the keys to the cabin?",
    "They are on the hook by the kitchen door.",
]
VOICES = ("awb", "slt")


def flite_context(n_turns: int) -> list[Segment]:
    """The first ``n_turns`` of ``TURNS`` spoken by flite, alternating speakers 0 and 1."""
    from csm_lib.data import synthesize

    return [Segment(i % 2, text, synthesize(text, VOICES[i % 2])[0]) for i, text in enumerate(TURNS[:n_turns])]


# ----------------------------------------------------------------------------- what the cost models assume

# figures assumed for the prediction (vendor specifications): memory bandwidth and dense peak, and
# the time one kernel launch costs (eager PyTorch on a GPU: ~5 us per op; CUDA graphs: ~1 us)
DEVICES = {
    "RTX 4090 (consumer GPU)": {"bandwidth_GBps": 1008, "fp32_TFLOPs": 82.6, "bf16_TFLOPs": 165},
    "H200": {"bandwidth_GBps": 4800, "fp32_TFLOPs": 67, "bf16_TFLOPs": 989},
}
LAUNCH_US = {"eager": 5.0, "cuda_graphs": 1.0}


def layer_weights(t) -> int:
    """Weights of one transformer layer of config ``t``: attention, then the SwiGLU MLP."""
    attention = t.dim * (t.n_heads + 2 * t.n_kv_heads) * t.head_dim + t.n_heads * t.head_dim * t.dim
    return attention + 3 * t.dim * t.hidden_dim


# ----------------------------------------------------------------------------- the training batch of chapters 05 and 07


def reference_batch(max_len: int, windows: int = 8):
    """The first ``windows`` training windows of the 1 h corpus, as chapters 05 and 07 use them."""
    train_w, _, cfg, info = load_data(TrainConfig(preset="reference", hours=1.0, corpus_seed=0,
                                                  codec=str(REFERENCE_CODEC), max_len=max_len, amp="fp32"))
    frames, mask = train_w.batch(list(range(windows)))
    return frames, mask, cfg, info
