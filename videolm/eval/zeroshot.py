"""Zero-shot classification, two ways.

**Dual encoder** (CLIP's recipe): each class name is put into every prompt
template, the prompts are embedded, averaged per class and L2-normalised
again; each video is assigned the class whose embedding it is closest to.
Top-1 / top-5 and per-class accuracy (their mean is the balanced accuracy);
a true class tied with others counts as ranked after them (pessimistic).

**Masked template** (VideoBERT's zero-shot verb / object classification): a
sentence with ``[MASK]`` slots, e.g. "now let me show you how to [MASK] the
[MASK]", is fed with the video through one joint pass; the masked-LM head
predicts each slot, optionally restricted to a word list (verbs, nouns,
attribute values); top-1 / top-5 per slot against the true words. Candidate
words must be single WordPiece tokens (multi-piece words would need several
slots); a word that is not is an error naming it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np
import torch

from videolm.eval.embeddings import Encoder, EvalError
from videolm.eval.metrics import GroundTruth, rank_stats, ranks
from videolm.eval.protocols import Item
from videolm.fileio import iter_jsonl, utf8_errors_as

DEFAULT_TEMPLATES = ("a video of {}.", "a video of a person {}.", "{}")


def kinetics400_classes() -> list[str]:
    """The 400 Kinetics class names, as torchvision ships them with its video weights."""
    from torchvision.models.video import S3D_Weights

    return list(S3D_Weights.KINETICS400_V1.meta["categories"])


def read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise EvalError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise EvalError(f"{path}: empty (expected one entry a line)")
    return lines


def read_labels(path: str, key: str) -> dict[str, object]:
    """media id -> value of ``key`` ("label": a class name; "words": a list, one per slot)
    from JSONL rows ``{"video_id"|"image_id": ..., key: ...}`` or a CSV with those columns."""
    if not os.path.isfile(path):
        raise EvalError(f"{path}: no such labels file")
    out: dict[str, object] = {}
    if path.endswith(".csv"):
        with utf8_errors_as(EvalError, path), open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            id_col = "video_id" if "video_id" in (reader.fieldnames or []) else "image_id"
            if id_col not in (reader.fieldnames or []) or key not in reader.fieldnames:
                raise EvalError(f"{path}:1: needs columns video_id (or image_id) and {key}")
            for row in reader:
                media_id, value = (row.get(id_col) or "").strip(), (row.get(key) or "").strip()
                if not media_id or not value:
                    raise EvalError(f"{path}:{reader.line_num}: empty {id_col if not media_id else key}")
                out[media_id] = value.split() if key == "words" else value
        return out
    for line_no, row in iter_jsonl(path, EvalError, "labels file"):
        media_id = row.get("video_id", row.get("image_id")) if isinstance(row, dict) else None
        if media_id is None or key not in row:
            raise EvalError(f"{path}:{line_no}: needs 'video_id' (or 'image_id') and {key!r}")
        value = row[key]
        if key == "words" and not (isinstance(value, list) and value and all(isinstance(w, str) and w.strip()
                                                                              for w in value)):
            raise EvalError(f"{path}:{line_no}: words must be a list of words, one per slot, not {value!r:.40}")
        if key != "words" and not (isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip()):
            raise EvalError(f"{path}:{line_no}: {key} must be a class name, not {value!r:.40}")
        out[str(media_id)] = value if key == "words" else str(value).strip()
    if not out:
        raise EvalError(f"{path}: no rows")
    return out


def _items(store, ids, spans=None) -> list[Item]:
    """``spans``: id -> (media id, start, end) for timed segments; other ids are whole videos / images."""
    spans = spans or {}
    media = {i: spans[i][0] if i in spans else i for i in ids}
    missing = [i for i in ids if media[i] not in store]
    if missing:
        raise EvalError(f"{len(missing)} labelled ids have no features in {store.root} (first: {media[missing[0]]!r})")
    return [Item(i, media[i], "image" if store.entry(media[i]).get("kind") == "image" else "video", [],
                 (float(spans[i][1]), float(spans[i][2])) if i in spans else None) for i in ids]


@dataclass
class ZeroShotResult:
    top1: float
    top5: float
    per_class: dict[str, float]      # class -> top-1 accuracy (percent) over its videos
    balanced: float                  # mean of per_class
    chance_top1: float
    count: int
    predictions: dict[str, str]      # media id -> predicted class

    def as_dict(self) -> dict:
        return {"top1": round(self.top1, 4), "top5": round(self.top5, 4), "balanced_top1": round(self.balanced, 4),
                "chance_top1": round(self.chance_top1, 4), "videos": self.count,
                "per_class": {k: round(v, 4) for k, v in self.per_class.items()}}


def zeroshot_dual(encoder: Encoder, store, labels: dict[str, str], classes: list[str],
                  templates=DEFAULT_TEMPLATES) -> ZeroShotResult:
    unknown = sorted({v for v in labels.values() if v not in classes})
    if unknown:
        raise EvalError(f"label {unknown[0]!r} is not one of the {len(classes)} classes")
    ids = list(labels)
    visual = encoder.embed_visuals(encoder.visual_inputs(store, _items(store, ids)))      # (N, E)
    prompts = [t.format(c) for c in classes for t in templates]
    text = encoder.embed_texts(encoder.text_inputs(prompts)).reshape(len(classes), len(templates), -1).mean(1)
    text /= np.linalg.norm(text, axis=1, keepdims=True)                                    # (C, E)
    scores = visual @ text.T                                                               # (N, C)
    truth = np.array([classes.index(labels[i]) for i in ids])
    r = ranks(rank_stats(scores, GroundTruth.single(truth)), "pessimistic")
    per_class = {c: float(100 * np.mean(r[truth == j] <= 1)) for j, c in enumerate(classes) if (truth == j).any()}
    predicted = scores.argmax(1)
    return ZeroShotResult(float(100 * np.mean(r <= 1)), float(100 * np.mean(r <= 5)), per_class,
                          float(np.mean(list(per_class.values()))), 100.0 / len(classes), len(ids),
                          {i: classes[p] for i, p in zip(ids, predicted)})


@dataclass
class MaskedResult:
    slots: list[dict]   # per slot: top1, top5, chance_top1, candidates, count

    def as_dict(self) -> dict:
        return {"slots": self.slots}


def _single_token_ids(encoder: Encoder, words: list[str], where: str) -> list[int]:
    ids = []
    for w in words:
        pieces = encoder.tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise EvalError(f"{where}: {w!r} is {len(pieces)} WordPiece tokens; candidate words must be one token")
        ids.append(pieces[0])
    return ids


@torch.inference_mode()
def zeroshot_masked(encoder: Encoder, store, template: str | dict[str, str], truth: dict[str, list[str]],
                    candidates: list[list[str]] | None = None,
                    spans: dict[str, tuple[str, float, float]] | None = None) -> MaskedResult:
    """``truth``: media id -> the true word of each slot; ``candidates``: per slot,
    the words predictions are restricted to (None: the whole vocabulary);
    ``spans``: truth id -> (media id, start, end) when the ids are timed
    segments (YouCook2), whose clips are the ones the span overlaps.
    ``template`` is one sentence for all, or one per truth id (e.g. the item's
    own caption with one attribute word masked)."""
    mask = encoder.tokenizer.mask_token
    templates = template if isinstance(template, dict) else {i: template for i in truth}
    missing = [i for i in truth if i not in templates]
    if missing:
        raise EvalError(f"no template for {missing[0]!r}")
    counts = {templates[i].count(mask) for i in truth}
    n_slots = min(counts) if counts else 0
    if n_slots == 0 or len(counts) > 1:
        shown = next(iter(templates.values()), "")
        raise EvalError(f"the template {shown!r} has no {mask} slot" if n_slots == 0 else
                        f"the templates have different numbers of {mask} slots ({sorted(counts)})")
    bad = [i for i, words in truth.items() if len(words) != n_slots]
    if bad:
        raise EvalError(f"{bad[0]!r} has {len(truth[bad[0]])} true words; the template has {n_slots} slots")
    if candidates is not None and len(candidates) != n_slots:
        raise EvalError(f"{len(candidates)} candidate lists for {n_slots} slots")
    cand_ids = ([_single_token_ids(encoder, c, f"slot {s + 1} candidates") for s, c in enumerate(candidates)]
                if candidates else None)
    ids = list(truth)
    texts = dict(zip(ids, encoder.text_inputs([templates[i] for i in ids])))
    for i, text in texts.items():
        if int((text == encoder.tokenizer.mask_token_id).sum()) != n_slots:
            raise EvalError(f"the template of {i!r} lost a {mask} slot to max_text_len="
                            f"{encoder.settings.max_text_len}")
    visuals = encoder.visual_inputs(store, _items(store, ids, spans))
    model = encoder.model
    model.eval()
    hits = np.zeros((n_slots, 2))
    for start in range(0, len(ids), encoder.batch_size):
        chunk = visuals[start:start + encoder.batch_size]
        t_ids, t_att = encoder._text_batch([texts[i] for i in ids[start:start + len(chunk)]])
        v, v_att = encoder._visual_batch(chunk)
        select = t_ids == encoder.tokenizer.mask_token_id  # (B, T): the slots, n_slots per row
        logits = model.masked_text_logits(t_ids, t_att, v, v_att, select)  # (B * slots, V), either architecture
        logits = logits.float().view(len(chunk), n_slots, -1).cpu().numpy()
        for b, media_id in enumerate(ids[start:start + len(chunk)]):
            for s in range(n_slots):
                true = _single_token_ids(encoder, [truth[media_id][s]], f"{media_id} slot {s + 1}")[0]
                row = logits[b, s]
                pool = np.array(cand_ids[s]) if cand_ids else np.arange(len(row))
                if true not in pool:
                    raise EvalError(f"{media_id}: true word {truth[media_id][s]!r} is not among slot {s + 1}'s "
                                    "candidates")
                rank = 1 + int((row[pool] > row[true]).sum()) + int((row[pool] == row[true]).sum()) - 1
                hits[s] += [rank <= 1, rank <= 5]
    slots = []
    for s in range(n_slots):
        pool = len(cand_ids[s]) if cand_ids else len(encoder.tokenizer)
        slots.append({"slot": s + 1, "top1": round(100 * hits[s, 0] / len(ids), 4),
                      "top5": round(100 * hits[s, 1] / len(ids), 4), "chance_top1": round(100 / pool, 4),
                      "chance_top5": round(100 * min(5, pool) / pool, 4), "candidates": pool, "videos": len(ids)})
    return MaskedResult(slots)
