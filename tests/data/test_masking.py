"""Masking rates and proportions over many draws, special tokens, determinism."""

import numpy as np

from videolm.data.batch import IGNORE
from videolm.data.masking import (choose_positions, mask_text, mask_visual_positions, mask_visual_words,
                                  random_ids)

CLS, SEP, PAD, MASK, UNK = 101, 102, 0, 103, 100
SPECIAL = [PAD, UNK, CLS, SEP, MASK]
VOCAB = 30522


def text_of(n: int, rng) -> np.ndarray:
    return np.array([CLS, *rng.integers(1000, 30000, size=n), SEP], dtype=np.int64)


def test_text_rate_and_80_10_10():
    rng = np.random.default_rng(0)
    chosen = replaced = swapped = kept = total = 0
    for trial in range(3000):
        ids = text_of(40, rng)
        inputs, labels = mask_text(ids, np.random.default_rng([1, trial]), 0.15, MASK, VOCAB, SPECIAL)
        hit = labels != IGNORE
        assert np.array_equal(labels[hit], ids[hit]) and np.array_equal(inputs[~hit], ids[~hit])
        total += 40
        chosen += hit.sum()
        replaced += (inputs[hit] == MASK).sum()
        kept += (inputs[hit] == ids[hit]).sum()
        swapped += ((inputs[hit] != MASK) & (inputs[hit] != ids[hit])).sum()
    assert abs(chosen / total - 0.15) < 0.003     # floor(0.15 * 40 + u): 6 each, exactly 15 % expected
    assert abs(replaced / chosen - 0.8) < 0.015
    assert abs(swapped / chosen - 0.1) < 0.01
    assert abs(kept / chosen - 0.1) < 0.01


def test_special_tokens_are_never_masked_nor_drawn():
    # a small vocabulary where specials are half the ids, so a random draw would hit them often
    special = [0, 1, 2, 3]
    for trial in range(500):
        ids = np.array([2, 5, 1, 6, 7, 3, 4, 5, 6, 7, 5, 3], dtype=np.int64)  # a [SEP]/[UNK] inside the text
        inputs, labels = mask_text(ids, np.random.default_rng(trial), 0.5, 3, 8, special)
        hit = np.flatnonzero(labels != IGNORE)
        assert not np.isin(ids[hit], special).any()
        assert 0 not in hit and len(ids) - 1 not in hit
        swapped = hit[(inputs[hit] != 3) & (inputs[hit] != ids[hit])]
        assert not np.isin(inputs[swapped], special).any()
    assert not np.isin(random_ids(np.random.default_rng(0), 10000, 8, special), special).any()


def test_at_least_one_text_token_and_the_empty_text():
    for n in range(1, 7):  # 0.15 * n < 1: one token, always
        for trial in range(50):
            _, labels = mask_text(text_of(n, np.random.default_rng(n)), np.random.default_rng(trial), 0.15, MASK,
                                  VOCAB, SPECIAL)
            assert (labels != IGNORE).sum() == 1
    inputs, labels = mask_text(np.array([CLS, SEP]), np.random.default_rng(0), 0.15, MASK, VOCAB, SPECIAL)
    assert inputs.tolist() == [CLS, SEP] and labels.tolist() == [IGNORE, IGNORE]
    _, labels = mask_text(text_of(10, np.random.default_rng(0)), np.random.default_rng(0), 0.0, MASK, VOCAB, SPECIAL)
    assert (labels == IGNORE).all()  # prob 0 switches masking off


def test_visual_words_rate_labels_and_random_words():
    num_words, mask_id = 9, 10
    chosen = total = replaced = 0
    for trial in range(3000):
        words = np.random.default_rng(trial).integers(0, num_words, size=20)
        inputs, labels, masked = mask_visual_words(words, np.random.default_rng([2, trial]), 0.15, mask_id,
                                                   num_words)
        assert np.array_equal(masked, labels != IGNORE) and np.array_equal(labels[masked], words[masked])
        assert np.array_equal(inputs[~masked], words[~masked])
        assert ((inputs[masked] == mask_id) | (inputs[masked] < num_words)).all()  # never [PAD] = 9
        total += 20
        chosen += masked.sum()
        replaced += (inputs[masked] == mask_id).sum()
    assert abs(chosen / total - 0.15) < 0.003 and abs(replaced / chosen - 0.8) < 0.015


def test_visual_positions_have_no_floor():
    one = [mask_visual_positions(1, np.random.default_rng(t), 0.15)[0] for t in range(4000)]
    assert abs(np.mean(one) - 0.15) < 0.02  # a still is masked 15 % of the time, not always
    assert mask_visual_positions(0, np.random.default_rng(0), 0.15).shape == (0,)


def test_same_rng_same_masks():
    ids = text_of(30, np.random.default_rng(0))
    a = mask_text(ids, np.random.default_rng([5, 6, 7]), 0.15, MASK, VOCAB, SPECIAL)
    b = mask_text(ids, np.random.default_rng([5, 6, 7]), 0.15, MASK, VOCAB, SPECIAL)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    picked = choose_positions(np.random.default_rng(3), np.arange(5, 25), 0.5)
    assert len(picked) == 10 and np.all(np.diff(picked) > 0) and picked.min() >= 5
