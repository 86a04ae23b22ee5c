"""The text side of CSM: a small byte-level BPE tokenizer and the ``[speaker]text`` prefix.

Sesame's CSM feeds the backbone Llama-3 tokens of ``"[0]hello"``: the speaker id is plain text
in front of each turn. We train our own small BPE on the corpus text instead (no downloads),
with the speaker prefixes ``[0]`` ... ``[7]`` as single special tokens, and ``<bos>``/``<eos>``
around every turn as the reference code does.

A character tokenizer is the same thing with no merges (``vocab_size=0``): chapter 01 compares
the two by the number that matters to the backbone, text tokens per second of speech.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

N_SPEAKERS = 8
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = [PAD, BOS, EOS] + [f"[{i}]" for i in range(N_SPEAKERS)]


class TextTokenizer:
    """Byte-level BPE with speaker-prefix special tokens.

    ``encode(text, speaker)`` -> ``[<bos>, [speaker], t1, t2, ..., <eos>]`` (a list of ints).
    """

    def __init__(self, tokenizer: Tokenizer):
        missing = [s for s in SPECIALS if tokenizer.token_to_id(s) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        self.tok = tokenizer
        self.pad_id, self.bos_id, self.eos_id = (tokenizer.token_to_id(s) for s in (PAD, BOS, EOS))

    @classmethod
    def train(cls, texts: list[str], vocab_size: int = 1024) -> TextTokenizer:
        """Learn a BPE from ``texts``. ``vocab_size`` counts the 256 bytes and the special tokens;
        ``vocab_size=0`` learns no merges at all (a byte/character tokenizer)."""
        if not texts:
            raise ValueError("cannot train a tokenizer on no text")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(vocab_size=max(vocab_size, len(alphabet) + len(SPECIALS)),
                                      special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def speaker_token(self, speaker: int) -> int:
        if not 0 <= speaker < N_SPEAKERS:
            raise ValueError(f"speaker id must be in 0..{N_SPEAKERS - 1}, got {speaker}")
        return self.tok.token_to_id(f"[{speaker}]")

    def encode(self, text: str, speaker: int) -> list[int]:
        """Token ids of one turn ``[speaker]text``, wrapped in ``<bos>``/``<eos>``."""
        if not text.strip():
            raise ValueError("cannot encode empty text: a turn needs words")
        return [self.bos_id, self.speaker_token(speaker), *self.tok.encode(text).ids, self.eos_id]

    def decode(self, ids: list[int]) -> str:
        """Inverse of ``encode``: ``"[speaker]text"`` (bos/eos/pad dropped)."""
        keep = [i for i in ids if i not in (self.pad_id, self.bos_id, self.eos_id)]
        out, chunk = [], []
        for i in keep:  # speaker tokens decode as text; the byte-level decoder would drop them
            tok = self.tok.id_to_token(i)
            if tok in SPECIALS:
                out.append(self.tok.decode(chunk) + tok)
                chunk = []
            else:
                chunk.append(i)
        return "".join(out) + self.tok.decode(chunk)

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        self.tok.save(str(tmp))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {path}; train one with TextTokenizer.train(texts)")
        return cls(Tokenizer.from_file(str(path)))


def corpus_tokenizer(folder: str | Path, vocab_size: int = 1024) -> TextTokenizer:
    """The tokenizer of a built corpus: trained on its train split once, then loaded from the cache."""
    from csm_lib.data import load_manifest

    path = Path(folder) / f"tokenizer-{vocab_size}.json"
    if path.exists():
        return TextTokenizer.load(path)
    tok = TextTokenizer.train([r["text"] for r in load_manifest(folder, "train")], vocab_size)
    tok.save(path)
    return tok
