"""Which text token is being spoken now: free alignments from flite, and three training signals built on them.

A small autoregressive speech LM must learn *alignment* on its own: while it emits audio frame t it
has to know which phone of the turn's text it is saying. Large models learn it from thousands of
hours; small ones skip, repeat and mumble. Our speech is synthetic, so the alignment is free:
flite prints every phone with its end time (``data.alignments``), and ``frame_alignment`` turns
that into, for each 80 ms codec frame, the position of the phone token in the turn's text.

Three training-only remedies use it (or, for CTC, only the turn's phones). None changes the model
that ships: their parameters live in ``AlignmentLosses``, beside the CSM, and are dropped with it.

* ``phone``: an auxiliary head on the backbone state h_t predicts the text token of the frame the
  state is about to emit (frame t+1): cross-entropy ``-log p(x_{a(t+1)} | h_t)``, where a(f) is the
  aligned text position of frame f.
* ``ctc``: connectionist temporal classification from the states that emit a turn's frames onto the
  turn's phones, which needs no alignment at all (arXiv 2406.17957 reports it makes LLM-based TTS
  more robust).
* ``guided``: guided attention (DC-TTS): two heads of one backbone layer are pulled to attend, from
  each audio position t, to the text near a(t+1): ``-log sum_{|j - a(t+1)| <= w} A_{t,j}``.

The total loss is ``CSM loss + weight * sum of the chosen remedies`` (``train.TrainConfig.align``).

Shapes: B batch, S positions, K codebooks, D backbone width, F codec frames, V text vocabulary.

Explained in chapter 07b (``notebooks/07b_reference_model.ipynb``, section 5).
"""

from __future__ import annotations

import difflib
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from csm_lib.backbone import apply_rope
from csm_lib.text import BOS, EOS, PUNCTUATION, SPECIALS, UNK, WORD_BOUNDARY

FRAME_S = 0.08  # one codec frame (12.5 Hz)
REMEDIES = ("phone", "ctc", "guided")
PAUSE = "pau"
FIRST_PHONE = len(SPECIALS) + 2 + len(PUNCTUATION)  # PhoneTokenizer's ids: specials, <unk>, |, punctuation, phones


def _base(phone: str) -> str:
    """A phone token without its stress mark: ``ay1`` -> ``ay`` (flite's -psdur prints none)."""
    return re.sub(r"\d$", "", phone)


def frame_alignment(phones: list[tuple[str, float]], tokens: list[str], n_frames: int,
                    frame_s: float = FRAME_S) -> list[int]:
    """The aligned text position of each of a turn's ``n_frames`` codec frames.

    ``phones``: flite's ``[(phone, end time s), ...]`` for the turn (``data.alignments``);
    ``tokens``: the turn's text tokens as strings, ``[<bos>, [spk], ph, ph, |, ph, ',', ..., <eos>]``
    (``PhoneTokenizer``). flite's spoken phones are matched to the text's by ``match_phones``.
    A pause is aligned to the first token after
    the phone before it that is punctuation, a word boundary or ``<eos>`` (the pause "reads" it); a
    pause before any phone to the speaker token. Frame f takes the phone sounding at its centre,
    ``(f + 1/2) * frame_s``; frames after flite's last end time take its last phone.
    Returns ``n_frames`` positions into ``tokens``.
    """
    if tokens[0] != BOS or tokens[-1] != EOS:
        raise ValueError(f"tokens must run <bos> ... <eos>, got {tokens[:2]} ... {tokens[-1:]}")
    is_phone = [t not in SPECIALS and t not in PUNCTUATION and t not in (WORD_BOUNDARY, UNK) for t in tokens]
    where = match_phones([p for p, _ in phones if p != PAUSE], [i for i, p in enumerate(is_phone) if p], tokens)
    segments, said, last = [], iter(where), None  # (end time, position) per flite phone
    for p, end in phones:
        if p == PAUSE:
            pos = 1 if last is None else next(
                (i for i in range(last + 1, len(tokens)) if not is_phone[i] and tokens[i] != UNK), len(tokens) - 1)
        else:
            pos = last = next(said)
        segments.append((end, pos))
    out, s = [], 0
    for f in range(n_frames):
        centre = (f + 0.5) * frame_s
        while s < len(segments) - 1 and segments[s][0] <= centre:
            s += 1
        out.append(segments[s][1])
    return out


def match_phones(said: list[str], positions: list[int], tokens: list[str]) -> list[int]:
    """For each phone flite said (pauses left out), the position of the text's phone token it speaks.

    The text's phones come from a lexicon of single words (``text.phonemize``), while flite speaks
    words in context (``a`` is ``ey`` alone, ``ax`` in a sentence), so the two sequences are aligned
    by edit operations (``difflib``; stress marks ignored): equal and substituted phones map one to
    one (a substitution of unequal lengths spreads evenly), a phone flite adds takes the position
    of the text phone before it, and a text phone flite drops gets no frame.
    """
    text = [_base(tokens[i]) for i in positions]
    if not positions:
        raise ValueError("the text has no phone to align to")
    out = [0] * len(said)
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, said, text, autojunk=False).get_opcodes():
        for k in range(a0, a1):
            if op in ("equal", "replace"):
                j = b0 + (k - a0) * (b1 - b0) // (a1 - a0)
            else:  # insert in flite's speech: the text phone before it, or the first one
                j = max(b0 - 1, 0)
            out[k] = positions[min(j, len(positions) - 1)]
    return out


def attention_probs(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                    heads: tuple[int, ...] | None = None) -> torch.Tensor:
    """Attention probabilities of ``heads`` (default all) of the layer ``attn`` (a ``backbone.Attention``)
    given its input ``x`` (B, S, D), rotary tables and mask: ``(B, h, S, S)``, softmax of q.k / sqrt(Dh)."""
    B, S, _ = x.shape
    cfg, hd = attn.cfg, attn.cfg.head_dim
    heads_t = torch.tensor(heads if heads is not None else range(cfg.n_heads), device=x.device)
    q = attn.q_proj(x).view(B, S, cfg.n_heads, hd).transpose(1, 2)[:, heads_t]  # (B, h, S, Dh)
    k = attn.k_proj(x).view(B, S, cfg.n_kv_heads, hd).transpose(1, 2)
    k = k[:, heads_t // (cfg.n_heads // cfg.n_kv_heads)]  # each query head's K/V group (GQA)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    logits = (q @ k.transpose(-1, -2)).float() * hd ** -0.5  # (B, h, S, S)
    return logits.masked_fill(~mask, float("-inf")).softmax(-1)


@torch.no_grad()
def attention_maps(model: nn.Module, frames: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Every backbone layer's attention probabilities over a batch ``(B, S, K+1)``: L tensors ``(B, H, S, S)``."""
    captured = []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, a: captured.append((m, *a[:4])))
             for layer in model.backbone.layers]
    try:
        model.hidden(model.embed_frames(frames, mask), mask)
    finally:
        for h in hooks:
            h.remove()
    return [attention_probs(*c) for c in captured]


def aligned_mass(probs: torch.Tensor, align: torch.Tensor, mask: torch.Tensor, window: int = 1) -> torch.Tensor:
    """Each head's mean attention mass near the aligned text, ``(H,)``: from every position t whose next
    position is an audio frame, the mass on text positions within ``window`` of a(t+1) (``probs``
    (B, H, S, S), ``align`` (B, S), ``mask`` (B, S, K+1)). 1 is a head that reads exactly the phone being
    said; a head that ignores the text scores about 0."""
    target = mask[:, 1:, :-1].all(-1) & (align[:, 1:] >= 0)
    b, t = target.nonzero(as_tuple=True)
    pos = align[:, 1:][b, t]
    near = torch.zeros_like(probs[:, 0], dtype=torch.bool)
    for d in range(-window, window + 1):
        near[b, t, (pos + d).clamp(0, probs.shape[-1] - 1)] = True
    return (probs * (near & mask[:, None, :, -1])[:, None]).sum(-1)[b, :, t].mean(0)


def turn_spans(mask: torch.Tensor) -> list[tuple[int, int, int]]:
    """A sequence's turns, from its mask ``(S, K+1)``: ``[(text_start, audio_start, audio_end), ...]``.

    A turn is a run of text positions followed by a run of audio positions (its frames and the
    end-of-speech frame); ``audio_end`` is exclusive. Padding (an all-False mask) ends the sequence.
    """
    text = mask[:, -1].tolist()
    audio = mask[:, :-1].all(-1).tolist()
    spans, i, S = [], 0, len(text)
    while i < S:
        if not text[i]:
            i += 1
            continue
        t0 = i
        while i < S and text[i]:
            i += 1
        a0 = i
        while i < S and audio[i]:
            i += 1
        if i > a0:
            spans.append((t0, a0, i))
    return spans


class AlignmentLosses(nn.Module):
    """The training-only alignment remedies of a CSM (module docstring); ``forward`` returns their losses.

    ``remedies``: a subset of ``REMEDIES``. ``guided_layer``/``guided_heads``: the backbone layer and
    the query heads whose attention is guided; ``window``: the text positions either side of the
    aligned one that count as "near".
    """

    def __init__(self, dim: int, text_vocab_size: int, remedies: tuple[str, ...], guided_layer: int = 1,
                 guided_heads: tuple[int, ...] = (0, 1), window: int = 1):
        super().__init__()
        unknown = set(remedies) - set(REMEDIES)
        if unknown or not remedies:
            raise ValueError(f"remedies must be a non-empty subset of {REMEDIES}, got {remedies}")
        self.remedies, self.guided_layer, self.guided_heads, self.window = remedies, guided_layer, guided_heads, window
        self.phone_head = nn.Linear(dim, text_vocab_size) if "phone" in remedies else None
        self.ctc_head = nn.Linear(dim, text_vocab_size + 1) if "ctc" in remedies else None  # last class: blank
        self._captured: tuple | None = None

    # --- guided attention: the layer's input is captured by a hook during the CSM's forward ------
    def attach(self, csm: nn.Module) -> None:
        """Watch the guided layer's attention input (a forward pre-hook); call once per model."""
        if "guided" in self.remedies:
            attn = csm.backbone.layers[self.guided_layer].self_attn
            attn.register_forward_pre_hook(lambda module, args: self._capture(module, args))

    def _capture(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            self._captured = (module, *args[:4])  # (attention, x, cos, sin, mask)

    def attention(self) -> torch.Tensor:
        """The guided heads' attention probabilities of the last training forward: ``(B, h, S, S)``."""
        return attention_probs(*self._captured, heads=self.guided_heads)

    # --- the losses ---------------------------------------------------------------------------------
    def forward(self, h: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor, align: torch.Tensor | None,
                target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of the chosen remedies.

        ``h`` (B, S, D): the backbone's states; ``frames``/``mask`` (B, S, K+1); ``align`` (B, S): for an
        audio position, the position of its aligned text token in the same sequence, else -1 (needed
        by ``phone`` and ``guided``); ``target`` (B, S-1): True where position t+1 is an audio frame
        (``CSM.audio_targets``). Returns ``{remedy: loss}``.
        """
        out = {}
        if self.phone_head is not None or "guided" in self.remedies:
            if align is None:
                raise ValueError("the phone and guided remedies need the corpus's alignments (align)")
            nxt = align[:, 1:]  # (B, S-1): the text position aligned to frame t+1
            sel = target & (nxt >= 0)
            b, t = sel.nonzero(as_tuple=True)
            pos = nxt[b, t]
        if self.phone_head is not None:
            labels = frames[b, pos, -1]  # the aligned text token's id
            out["phone"] = F.cross_entropy(self.phone_head(h[b, t]).float(), labels)
        if "guided" in self.remedies:
            A = self.attention()  # (B, h, S, S)
            near = torch.zeros_like(A[:, 0], dtype=torch.bool)  # (B, S, S)
            for d in range(-self.window, self.window + 1):
                near[b, t, (pos + d).clamp(0, A.shape[-1] - 1)] = True
            mass = (A * near[:, None]).sum(-1)[b, :, t]  # (N, h)
            out["guided"] = -(mass + 1e-6).log().mean()
            self._captured = None
        if self.ctc_head is not None:
            out["ctc"] = self._ctc(h, frames, mask)
        return out

    def _ctc(self, h: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CTC from the states that emit each turn's audio frames (h at a0-1 .. end-2) onto its phones."""
        blank = self.ctc_head.out_features - 1
        inputs, targets, in_len, tgt_len = [], [], [], []
        for i in range(len(h)):
            for t0, a0, a1 in turn_spans(mask[i]):
                ids = frames[i, t0:a0, -1]
                ids = ids[ids >= FIRST_PHONE]  # the turn's phones (no specials, boundaries, punctuation)
                inputs.append(h[i, a0 - 1:a1 - 1])  # state t emits frame t+1
                targets.append(ids)
                in_len.append(a1 - a0)
                tgt_len.append(len(ids))
        logp = self.ctc_head(nn.utils.rnn.pad_sequence(inputs)).float().log_softmax(-1)  # (T, N, V+1)
        return F.ctc_loss(logp, torch.cat(targets), torch.tensor(in_len), torch.tensor(tgt_len), blank=blank,
                          zero_infinity=True)
