"""The text side of CSM: a small byte-level BPE tokenizer and the ``[speaker]text`` prefix.

Sesame's CSM feeds the backbone Llama-3 tokens of ``"[0]hello"``: the speaker id is plain text
in front of each turn. We train our own small BPE on the corpus text instead (no downloads),
with the speaker prefixes ``[0]`` ... ``[7]`` as single special tokens, and ``<bos>``/``<eos>``
around every turn as the reference code does.

A character tokenizer is the same thing with no merges (``vocab_size=0``): chapter 01 compares
the two by the number that matters to the backbone, text tokens per second of speech.

``PhoneTokenizer`` is the third choice (chapter 07b compares all three): the turn's words as the
phones flite itself will say (its ``t2p`` front end: lexicon plus letter-to-sound rules), ``|``
between words, punctuation kept. Same ``encode``/``decode``/``save`` and the same
``<bos>[speaker]...<eos>`` layout: only the vocabulary changes. ``load_tokenizer`` reads either kind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import OrderedDict
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

    def encode_many(self, turns: list[tuple[str, int]]) -> list[list[int]]:
        """``encode`` of many ``(text, speaker)`` turns (the interface of ``PhoneTokenizer``)."""
        return [self.encode(text, speaker) for text, speaker in turns]

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


# --- phones -----------------------------------------------------------------------------------------
WORD_BOUNDARY, UNK = "|", "<unk>"
PUNCTUATION = (",", ".", "?", "!")
LEXICON_WORDS = 2**16  # words the lexicon keeps (~650 bytes each: ~43 MB at most); a corpus has ~27,000


class Lexicon(OrderedDict):
    """word -> flite phones, the ``max_words`` most recently used words (an LRU cache).

    A long-running process (a server worker) meets new words forever; the least recently used
    one leaves when the lexicon is full, and is looked up again if it comes back.
    """

    def __init__(self, max_words: int = LEXICON_WORDS):
        super().__init__()
        self.max_words = max_words

    def __setitem__(self, word: str, phones: list[str]) -> None:
        super().__setitem__(word, phones)
        self.move_to_end(word)
        while len(self) > self.max_words:
            self.popitem(last=False)

    def missing(self, words: set[str]) -> list[str]:
        """The words not kept, sorted; the kept ones become the most recently used."""
        for w in words & self.keys():
            self.move_to_end(w)
        return sorted(words - self.keys())


_LEXICON = Lexicon()  # filled by t2p as words are met


def _t2p(words: list[str]) -> list[list[str]]:
    """flite's phones of each word. One ``t2p`` call reads many words separated by commas; each
    comma is a pause (``pau``) in its output, which cuts it back into words."""
    exe = shutil.which("t2p")
    if exe is None:
        raise RuntimeError("flite's t2p is not installed: `sudo apt-get install flite` (Debian/Ubuntu)")
    out: list[list[str]] = []
    for i in range(0, len(words), 400):
        chunk = words[i:i + 400]
        res = subprocess.run([exe, ", ".join(chunk)], capture_output=True, text=True, check=True)
        parts = [p.split() for p in res.stdout.split("pau")[1:-1]]
        if len(parts) != len(chunk) and len(chunk) == 1:  # a single word: all its phones
            parts = [[p for p in res.stdout.split() if p != "pau"]]
        elif len(parts) != len(chunk):  # a word that makes no pause of its own: one call each
            parts = [_t2p([w])[0] for w in chunk]
        out += parts
    return out


def _pieces(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+(?:'[A-Za-z]+)*|[,.?!;:]", text)


def learn(texts: list[str]) -> None:
    """Look up every word of ``texts`` not yet in the lexicon, in as few ``t2p`` calls as possible (one per
    400 words). Afterwards they are the lexicon's most recent words: all of them are kept as long as
    ``texts`` hold no more than ``LEXICON_WORDS`` different words (one turn's text always fits)."""
    new = _LEXICON.missing({p.lower() for t in texts for p in _pieces(t) if p[0].isalnum()})
    _LEXICON.update(zip(new, _t2p(new), strict=True))


def phonemize(text: str) -> list[str]:
    """``text`` as flite's phones: ``"Hi, Bob."`` -> ``['hh', 'ay1', ',', '|', 'b', 'aa1', 'b', '.']``."""
    pieces = _pieces(text)
    learn([text])
    out: list[str] = []
    for p in pieces:
        if p[0].isalnum():
            if out and out[-1] != WORD_BOUNDARY:
                out.append(WORD_BOUNDARY)
            out += _LEXICON[p.lower()]
        else:
            out.append("," if p in ";:" else p)
    return out


class PhoneTokenizer:
    """Phones of flite's front end as text tokens: ``encode(text, speaker)`` ->
    ``[<bos>, [speaker], phone, ..., <eos>]``, the layout of ``TextTokenizer``."""

    kind = "phones"

    def __init__(self, phones: list[str]):
        self.tokens = SPECIALS + [UNK, WORD_BOUNDARY, *PUNCTUATION] + sorted(set(phones) - {UNK, WORD_BOUNDARY,
                                                                                            *PUNCTUATION})
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id = (self.ids[s] for s in (PAD, BOS, EOS))

    @classmethod
    def train(cls, texts: list[str]) -> PhoneTokenizer:
        """The phone inventory of ``texts`` (flite's ~70 phones with stress marks)."""
        if not texts:
            raise ValueError("cannot train a tokenizer on no text")
        learn(texts)
        return cls([p for t in texts for p in phonemize(t)])

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def speaker_token(self, speaker: int) -> int:
        if not 0 <= speaker < N_SPEAKERS:
            raise ValueError(f"speaker id must be in 0..{N_SPEAKERS - 1}, got {speaker}")
        return self.ids[f"[{speaker}]"]

    def encode(self, text: str, speaker: int) -> list[int]:
        phones = phonemize(text)
        if not any(p not in PUNCTUATION for p in phones):
            raise ValueError(f"cannot encode {text!r}: a turn needs words")
        unk = self.ids[UNK]
        return [self.bos_id, self.speaker_token(speaker), *(self.ids.get(p, unk) for p in phones), self.eos_id]

    def encode_many(self, turns: list[tuple[str, int]]) -> list[list[int]]:
        """``encode`` of many ``(text, speaker)`` turns, their words looked up in one batch."""
        learn([text for text, _ in turns])
        return [self.encode(text, speaker) for text, speaker in turns]

    def decode(self, ids: list[int]) -> str:
        """``"[speaker]ph ph | ph ..."`` (bos/eos/pad dropped): phones cannot be spelt back."""
        keep = [self.tokens[i] for i in ids if i not in (self.pad_id, self.bos_id, self.eos_id)]
        return " ".join(keep).replace("] ", "]")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"kind": self.kind, "tokens": self.tokens}, indent=0) + "\n")
        os.replace(tmp, path)
        return path


def load_tokenizer(path: str | Path) -> TextTokenizer | PhoneTokenizer:
    """A saved tokenizer of either kind (a ``PhoneTokenizer`` file says ``"kind": "phones"``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}; train one with TextTokenizer.train(texts)")
    blob = json.loads(path.read_text())
    if blob.get("kind") == PhoneTokenizer.kind:
        return PhoneTokenizer([t for t in blob["tokens"] if t not in SPECIALS])
    return TextTokenizer.load(path)


AnyTokenizer = TextTokenizer | PhoneTokenizer
TEXT_INPUTS = ("bpe", "chars", "phones")  # what the backbone reads: train.TrainConfig.text_input


def corpus_tokenizer(folder: str | Path, vocab_size: int = 1024, kind: str = "bpe") -> AnyTokenizer:
    """The tokenizer of a built corpus: trained on its train split once, then loaded from the cache.

    ``kind``: ``bpe`` (``vocab_size`` tokens), ``chars`` (no merges) or ``phones``."""
    from csm_lib.data import load_manifest

    if kind not in TEXT_INPUTS:
        raise ValueError(f"unknown text input {kind!r}; choose from {TEXT_INPUTS}")
    size = {"bpe": vocab_size, "chars": 0}.get(kind)
    path = Path(folder) / (f"tokenizer-{size}.json" if size is not None else "tokenizer-phones.json")
    if path.exists():
        return load_tokenizer(path)
    texts = [r["text"] for r in load_manifest(folder, "train")]
    tok = TextTokenizer.train(texts, size) if size is not None else PhoneTokenizer.train(texts)
    tok.save(path)
    return tok
