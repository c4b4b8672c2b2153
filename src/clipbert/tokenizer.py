"""BERT WordPiece tokenizer from local files only, a tiny vocabulary for the demo, and length stats.

transformers 5 builds `BertTokenizer` on the `tokenizers` backend and silently ignores
`vocab_file=`, mapping every word to [UNK]; the vocabulary is therefore passed as `vocab=` (a
dict read here) and every loaded tokenizer is probed with words of its own vocabulary.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_open

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_HF_FILES = ("tokenizer.json", "tokenizer_config.json")


def read_vocab(path: str | os.PathLike) -> dict[str, int]:
    """Token -> id from a vocab.txt (id = line number); refuses files that would mis-number ids."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ClipbertError(f"{path}: vocabulary file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ClipbertError(f"{path}: cannot read the vocabulary ({e})") from None
    if not text.strip():
        raise ClipbertError(f"{path}: the vocabulary file is empty")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    for i, token in enumerate(lines):
        token = token.rstrip("\r")
        if not token:
            raise ClipbertError(f"{path}: line {i + 1}: empty token")
        if token in vocab:
            raise ClipbertError(f"{path}: line {i + 1}: token {token!r} repeats line "
                                f"{vocab[token] + 1}")
        vocab[token] = i
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ClipbertError(f"{path}: special tokens missing from the vocabulary: "
                            f"{' '.join(missing)}")
    if len(vocab) == len(SPECIAL_TOKENS):
        raise ClipbertError(f"{path}: the vocabulary holds only the special tokens")
    return vocab


def check_tokenizer(tok: Any, source: str | os.PathLike, expected_size: int | None = None) -> None:
    """Fail loudly if the vocabulary did not load (the vocab_file trap leaves only the special
    tokens) or if ordinary words of the vocabulary come out as [UNK]."""
    vocab = tok.get_vocab()
    if len(vocab) <= len(SPECIAL_TOKENS) or (expected_size is not None
                                             and len(vocab) != expected_size):
        expected = f" of {expected_size}" if expected_size is not None else ""
        raise ClipbertError(f"{source}: the tokenizer holds {len(vocab)} tokens{expected}; "
                            "the vocabulary was not loaded")
    words = [w for w in vocab if w.isalpha() and w.islower() and w.isascii()][:50]
    unk = tok.unk_token_id
    bad = [w for w in words if unk in tok(w, add_special_tokens=False)["input_ids"]]
    if bad:
        raise ClipbertError(f"{source}: the tokenizer maps vocabulary words to [UNK] "
                            f"(e.g. {bad[0]!r}); the vocabulary was not loaded")


def load_tokenizer(path: str | os.PathLike) -> Any:
    """A lower-casing BERT WordPiece tokenizer from a vocab.txt, a folder holding one, or a
    Hugging Face tokenizer folder; nothing is fetched from the hub."""
    from transformers import BertTokenizer

    path = Path(path)
    if path.is_dir():
        if any((path / f).is_file() for f in _HF_FILES):
            try:
                tok = BertTokenizer.from_pretrained(str(path), local_files_only=True)
            except (OSError, ValueError) as e:
                raise ClipbertError(f"{path}: cannot load the tokenizer folder ({e})") from None
            check_tokenizer(tok, path)
            return tok
        if not (path / "vocab.txt").is_file():
            raise ClipbertError(f"{path}: no vocab.txt or tokenizer.json in this folder")
        path = path / "vocab.txt"
    elif not path.exists():
        raise ClipbertError(f"{path}: vocabulary file not found")
    vocab = read_vocab(path)
    tok = BertTokenizer(vocab=vocab, do_lower_case=True)
    check_tokenizer(tok, path, expected_size=len(vocab))
    return tok


def basic_tokens(texts: Iterable[str]) -> list[str]:
    """Words and punctuation of `texts` as BertTokenizer splits them before WordPiece
    (clean-up, lower-casing, accent stripping, punctuation split)."""
    from transformers import BertTokenizer

    backend = BertTokenizer(do_lower_case=True).backend_tokenizer
    norm, pre = backend.normalizer, backend.pre_tokenizer
    out = []
    for text in texts:
        out.extend(word for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return out


def build_vocab(texts: Iterable[str], out_path: str | os.PathLike) -> int:
    """Write a whole-word vocab.txt covering `texts` so that none of their words become [UNK].

    Used by the embedded demo, which must not need the 30,522-token BERT vocabulary. Returns
    the vocabulary size.
    """
    words = sorted(set(basic_tokens(texts)) - set(SPECIAL_TOKENS))
    tokens = [*SPECIAL_TOKENS, *words]
    with atomic_open(out_path) as fh:
        fh.write("".join(t + "\n" for t in tokens))
    return len(tokens)


def truncation_report(tokenizer: Any, questions: Sequence[str], max_txt_len: int) -> dict:
    """Token lengths (with [CLS] and [SEP], as fed to the model) and how many exceed
    `max_txt_len` and would be cut, plus how many questions contain [UNK]."""
    questions = list(questions)
    if not questions:
        return {"n": 0, "max_txt_len": max_txt_len, "truncated": 0, "max_len": 0,
                "median_len": 0, "p99_len": 0, "with_unk": 0}
    ids = tokenizer(questions, add_special_tokens=True)["input_ids"]
    lengths = sorted(len(x) for x in ids)
    unk = tokenizer.unk_token_id
    return {
        "n": len(lengths),
        "max_txt_len": max_txt_len,
        "truncated": sum(n > max_txt_len for n in lengths),
        "max_len": lengths[-1],
        "median_len": statistics.median(lengths),
        "p99_len": lengths[min(len(lengths) - 1, (99 * len(lengths)) // 100)],
        "with_unk": sum(unk in x for x in ids),
    }

