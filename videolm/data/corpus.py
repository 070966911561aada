"""Pre-training examples from manifests and feature stores.

``build_pretrain_dataset(cfg, mode, tokenizer, seed)`` reads every manifest
(formats: docs/formats.md, "Corpus manifests"), checks it against its store
(and, in VideoBERT mode, the vocabulary and the store's tokens), and returns
a ``PretrainDataset`` indexed by ``(epoch, position)`` keys.

**Items.** A caption or image source has one item per caption (a video with
three captions is seen three times an epoch); an ASR source one item per
transcript row, whose text is drawn afresh each time (VideoBERT: a random
first segment, then the following segments up to a random token budget).

**Epoch plan.** An epoch has ``epoch_size`` positions (default: the sum of
the source sizes). Its positions are dealt to the sources in proportion to
their weights (largest remainder, so each source gets its share to within
one) and shuffled by an rng seeded with ``(seed, epoch)``. The k-th position
of source s in epoch e is that source's ``e * count_s + k``-th draw; draws
walk through seeded permutations of the source's items, one per cycle, so
every item is used once before any is used twice, across epoch boundaries.

**Per example.** All randomness of the example at ``(epoch, position)``
comes from ``SeedSequence([seed, epoch, position])``: the same example
whichever process, worker or rank builds it, so a run resumes mid-epoch and
splits positions over ranks freely.

**Memory.** The dataset holds the parsed manifests; the stores' indexes are
memory-mapped (format 2), so a worker's copy of a store costs its page
tables, not a copy of the index. Features, clip times and token ids are read
per example from the memory-mapped files (only the chosen clips, converted
to float32) and not kept. Pickling (for DataLoader workers started by spawn)
drops the open stores and the vocabulary; each process reopens them (from
their paths) on first use.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from videolm.data.align import align_span, asr_window, cap_clips, subsample_clips
from videolm.data.batch import Batch
from videolm.data.collate import Collator, Example
from videolm.data.config import DataConfig, SourceConfig
from videolm.data.errors import DataError
from videolm.data.manifest import BadRow, parse_row, read_manifest  # noqa: F401  (re-exported)
from videolm.data.masking import mask_text, mask_visual_positions, mask_visual_words
from videolm.features.store import FeatureStore
from videolm.tokenize.vocab import TokenizeError, TokenStore, Vocabulary, default_tokens_dir, open_store

log = logging.getLogger(__name__)

MODES = ("videobert", "cbt")
PLAN_STREAM, PERM_STREAM, EXAMPLE_STREAM = 1, 2, 3  # first word of each seed, so the streams never meet
ASR_CHUNK = 8  # ASR segments tokenized at a time while filling a budget
SHOWN_BAD_ROWS = 3  # bad rows logged one by one per manifest; the rest are counted


# ------------------------------------------------------------------ manifests


@dataclass(frozen=True, slots=True)
class Caption:
    """One caption (or image caption) item."""

    row: int               # index into Source.rows
    text: str
    start: float | None    # seconds; None = the whole video
    end: float | None


@dataclass(slots=True)
class Transcript:
    """One ASR row: segments sorted by start."""

    row: int
    starts: np.ndarray     # (n,) float64 seconds
    ends: np.ndarray       # (n,) float64
    texts: list[str]


@dataclass
class Source:
    """One manifest, parsed and checked against its store."""

    index: int
    kind: str
    manifest: str
    store: str                  # feature store root
    tokens: str | None          # VideoBERT tokens dir
    weight: float
    rows: list[tuple[int, str]]  # (line, media id) of each row with features
    items: list                 # Caption | Transcript
    rows_read: int
    bad: int
    missing: int

    def __len__(self) -> int:
        return len(self.items)


def load_source(index: int, scfg: SourceConfig, store: FeatureStore, tokens: str | None,
                max_missing_fraction: float) -> tuple[Source, list[str], list[dict]]:
    """Parse a manifest; keep rows whose id has features. Returns (source, bad rows, missing rows)."""
    path = scfg.manifest
    parsed, bad, count = read_manifest(path, scfg.kind)
    if count == 0:
        raise DataError(f"{path}: empty manifest (no rows)")
    if not parsed:
        raise DataError(f"{path}: none of its {count} rows is usable ({bad[0]})")
    for message in bad[:SHOWN_BAD_ROWS]:
        log.warning("skipped %s", message)
    if len(bad) > SHOWN_BAD_ROWS:
        log.warning("%s: skipped %d more bad rows (dataset.bad_rows lists them all)", path,
                    len(bad) - SHOWN_BAD_ROWS)
    rows, items, missing = [], [], []
    found = store.locate([media_id for _, media_id, _ in parsed])  # index rows, -1 where absent
    clips = np.where(found >= 0, np.asarray(store.index.num_clips)[np.maximum(found, 0)], 0)
    for (line, media_id, payload), n in zip(parsed, clips.tolist()):
        if n < 1:
            missing.append({"manifest": path, "line": line, "id": media_id})
            continue
        row = len(rows)
        rows.append((line, media_id))
        if scfg.kind == "asr":
            items.append(Transcript(row, *payload))
        else:
            items += [Caption(row, text, start, end) for text, start, end in payload]
    if len(missing) > max_missing_fraction * len(parsed) or not rows:
        shown = ", ".join(repr(m["id"]) for m in missing[:3])
        raise DataError(f"{len(missing)} of {len(parsed)} rows in {path} have no features in {store.root} "
                        f"(e.g. {shown}); check the ids or raise data.max_missing_fraction")
    if missing:
        log.warning("%s: %d of %d rows have no features in %s; skipped", path, len(missing), len(parsed), store.root)
    source = Source(index, scfg.kind, path, store.root, tokens, scfg.weight, rows, items, count, len(bad),
                    len(missing))
    return source, bad, missing


# ------------------------------------------------------------------ stores and vocabulary


def open_feature_store(root: str) -> FeatureStore:
    try:
        return open_store(root)
    except TokenizeError as err:
        raise DataError(str(err)) from None


def load_vocabulary(path: str) -> Vocabulary:
    try:
        return Vocabulary.from_pretrained(path)
    except TokenizeError as err:
        raise DataError(str(err)) from None


def open_tokens(tokens_dir: str, store: FeatureStore, vocab: Vocabulary, vocab_path: str, where: str) -> TokenStore:
    """The store's visual-word ids, made with this vocabulary. ``where``: the config key that sets the directory."""
    hint = f"run `videolm tokenize encode {store.root} --vocab {vocab_path}`"
    if not os.path.isdir(tokens_dir):
        raise DataError(f"{tokens_dir}: no visual-word tokens for store {store.root}; {hint} (or set {where})")
    try:
        tokens = TokenStore(tokens_dir)
    except TokenizeError:
        raise DataError(f"{tokens_dir}: unfinished visual-word tokens for store {store.root}; {hint}") from None
    made_with = tokens.meta.get("vocab_fingerprint")
    if made_with != vocab.fingerprint():
        raise DataError(f"{tokens_dir}: tokens were made with another vocabulary ({tokens.meta.get('vocab')}), "
                        f"not {vocab_path}; remove the directory and {hint}")
    return tokens


def check_tokens_cover(tokens: TokenStore, source: Source, store: FeatureStore, vocab_path: str) -> None:
    """Every video the source uses has tokens for each of its clips."""
    counts = {row["video_id"]: row["num_clips"] for row in tokens.rows}
    used = [media_id for _, media_id in source.rows]
    stored = np.asarray(store.index.num_clips)[store.locate(used)].tolist()  # every used id is in the store
    stale = sorted({media_id for media_id, n in zip(used, stored) if counts.get(media_id) != n})
    if stale:
        raise DataError(f"{tokens.root}: no tokens for {len(stale)} video(s) of {source.manifest} that are in "
                        f"{store.root} (e.g. {stale[0]!r}); the store changed since encoding: "
                        f"run `videolm tokenize encode {store.root} --vocab {vocab_path}`")


def group_id(media_id: str) -> int:
    """A stable non-negative int64 per video/image id (the same in every process and run)."""
    digest = hashlib.blake2b(media_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ------------------------------------------------------------------ the epoch plan


def allocate(total: int, weights) -> np.ndarray:
    """Split ``total`` positions by weight (largest remainder; ties to the earlier source)."""
    w = np.asarray(weights, dtype=np.float64)
    quota = total * w / w.sum()
    counts = np.floor(quota).astype(np.int64)
    left = total - int(counts.sum())
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:left]] += 1
    return counts


def epoch_plan(seed: int, epoch: int, counts: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(source, item) of every position of one epoch, each (epoch_size,) int64."""
    rng = np.random.default_rng([PLAN_STREAM, seed, epoch])
    source_of = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(source_of)
    item_of = np.empty(len(source_of), dtype=np.int64)
    for s, (count, size) in enumerate(zip(counts, sizes)):
        positions = np.flatnonzero(source_of == s)                # (count,) in position order
        draws = epoch * int(count) + np.arange(count)             # this source's draw numbers
        cycles, within = np.divmod(draws, size)
        for cycle in np.unique(cycles):
            perm = np.random.default_rng([PERM_STREAM, seed, s, int(cycle)]).permutation(size)
            hit = cycles == cycle
            item_of[positions[hit]] = perm[within[hit]]
    return source_of, item_of


# ------------------------------------------------------------------ the dataset


class PretrainDataset(torch.utils.data.Dataset):
    """``dataset[(epoch, position)]`` -> Example; ``dataset.collate(examples)`` -> Batch."""

    def __init__(self, cfg: DataConfig, mode: str, tokenizer, seed: int, sources: list[Source],
                 stores: dict[str, FeatureStore], vocab: Vocabulary | None, missing: list[dict], bad_rows: list[str]):
        self.cfg = cfg
        self.mode = mode
        self.tokenizer = tokenizer
        self.seed = int(seed) % 2**63
        self.sources = sources
        self.missing = missing
        self.bad_rows = bad_rows
        self.feature_dim = next(iter(stores.values())).dim
        self.vocab_path = vocab.path if vocab is not None else None
        self.sizes = [len(s) for s in sources]
        self.epoch_size = cfg.epoch_size or sum(self.sizes)
        self.counts = allocate(self.epoch_size, [s.weight for s in sources])
        self.text_limit = cfg.max_text_len - 2  # tokens between [CLS] and [SEP]
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        self.text_vocab_size = len(tokenizer)
        self.num_words = vocab.num_words if vocab is not None else 0
        self.visual_mask_id = vocab.mask_id if vocab is not None else -1
        self.collator = Collator(mode, tokenizer.pad_token_id, vocab.pad_id if vocab is not None else 0,
                                 self.feature_dim, vocab.vocab_size if vocab is not None else 0)
        self._stores = dict(stores)                      # root -> FeatureStore (reopened per process)
        self._tokens: dict[str, TokenStore] = {}         # dir -> TokenStore
        self._vocab = vocab
        self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # -- what the trainer sees

    def __len__(self) -> int:
        return self.epoch_size

    @property
    def vocab(self) -> Vocabulary | None:
        if self._vocab is None and self.vocab_path is not None:
            self._vocab = load_vocabulary(self.vocab_path)
        return self._vocab

    def collate(self, examples: list[Example]) -> Batch:
        return self.collator(examples)

    def describe(self) -> dict:
        stores = sorted({s.store for s in self.sources})
        return {
            "mode": self.mode, "store": stores[0] if len(stores) == 1 else stores, "vocab": self.vocab_path,
            "epoch_size": self.epoch_size, "feature_dim": self.feature_dim,
            "examples": sum(self.sizes), "missing": len(self.missing), "bad_rows": len(self.bad_rows),
            "sources": [{"kind": s.kind, "manifest": s.manifest, "store": s.store, "weight": float(s.weight),
                         "rows": s.rows_read, "used_rows": len(s.rows), "items": len(s), "bad_rows": s.bad,
                         "missing": s.missing, "per_epoch": int(c)} for s, c in zip(self.sources, self.counts)],
        }

    # -- lazily opened per process

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_stores={}, _tokens={}, _vocab=None, _plans={})
        return state

    def _store(self, root: str) -> FeatureStore:
        if root not in self._stores:
            self._stores[root] = open_feature_store(root)
        return self._stores[root]

    def _token_store(self, directory: str) -> TokenStore:
        if directory not in self._tokens:
            self._tokens[directory] = TokenStore(directory)
        return self._tokens[directory]

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, item) per position of an epoch; the last two epochs are cached."""
        if epoch not in self._plans:
            if len(self._plans) >= 2:
                self._plans.pop(next(iter(self._plans)))
            self._plans[epoch] = epoch_plan(self.seed, epoch, self.counts, self.sizes)
        return self._plans[epoch]

    # -- one example

    def __getitem__(self, key: tuple[int, int]) -> Example:
        epoch, position = (0, key) if isinstance(key, (int, np.integer)) else key
        epoch, position = int(epoch), int(position)
        if epoch < 0 or not 0 <= position < self.epoch_size:
            raise IndexError(f"key {key} outside epochs >= 0 and positions [0, {self.epoch_size})")
        source_of, item_of = self.plan(epoch)
        src = self.sources[int(source_of[position])]
        item = src.items[int(item_of[position])]
        media_id = src.rows[item.row][1]
        seeds = np.random.SeedSequence([EXAMPLE_STREAM, self.seed, epoch, position]).spawn(4)
        pick_rng, clip_rng, text_rng, visual_rng = (np.random.default_rng(s) for s in seeds)

        if isinstance(item, Transcript):
            ids, span = self._asr_text(item, pick_rng)
        else:
            ids, span = self._encode([item.text])[0], (None if item.start is None else (item.start, item.end))
        text = np.array([self.tokenizer.cls_token_id, *ids[: self.text_limit], self.tokenizer.sep_token_id],
                        dtype=np.int64)
        text_ids, text_labels = mask_text(text, text_rng, self.cfg.text_mask_prob, self.tokenizer.mask_token_id,
                                          self.text_vocab_size, self.special_ids)

        store = self._store(src.store)
        times = store.clip_times(media_id)                       # (n, 2) seconds
        is_image = src.kind == "image" or store.is_image(media_id)
        if span is None or is_image:
            clips = np.arange(len(times))
        else:
            clips = align_span(times, span[0], span[1], self.cfg.align_min_overlap)
        clips = subsample_clips(clips, self.cfg.clip_subsample, clip_rng)
        clips = cap_clips(clips, self.cfg.max_visual_len, clip_rng, self.cfg.clip_sampling)

        example = Example(text_ids, text_labels, np.zeros(0, bool), group_id(media_id), bool(is_image),
                          key=(epoch, position), source=src.index, video_id=media_id,
                          span=None if span is None else (float(span[0]), float(span[1])))
        if self.mode == "videobert":
            words = np.asarray(self._token_store(src.tokens).tokens(media_id)[clips], dtype=np.int64)
            usable = words >= 0  # -1: the clip's features held NaN/Inf
            clips, words = clips[usable], words[usable]
            example.visual_ids, example.visual_labels, example.visual_masked = mask_visual_words(
                words, visual_rng, self.cfg.visual_mask_prob, self.visual_mask_id, self.num_words)
        else:
            feats = np.asarray(store.features(media_id)[clips], dtype=np.float32)  # (v, D), only these rows read
            usable = np.isfinite(feats).all(axis=1)
            if not usable.all():
                clips, feats = clips[usable], feats[usable]
            example.visual_feats = feats
            example.visual_masked = mask_visual_positions(len(clips), visual_rng, self.cfg.visual_mask_prob)
        example.clips = clips
        return example

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """WordPiece ids without special tokens, each cut to the text budget."""
        return self.tokenizer(texts, add_special_tokens=False, truncation=True,
                              max_length=self.text_limit)["input_ids"]

    def _asr_text(self, item: Transcript, rng: np.random.Generator) -> tuple[list[int], tuple[float, float]]:
        """VideoBERT: a random first segment, then the following ones while
        the tokens stay within a budget drawn in [asr_min_tokens, asr_max_tokens]
        (both capped at the text budget). Returns (ids, union span)."""
        n = len(item.texts)
        first = int(rng.integers(n))
        low = min(self.cfg.asr_min_tokens, self.text_limit)
        budget = int(rng.integers(low, min(self.cfg.asr_max_tokens, self.text_limit) + 1))
        pieces: list[list[int]] = []
        end = first
        while end < n and sum(len(p) for p in pieces) <= budget:  # tokenize ahead until the budget is passed
            chunk = self._encode(item.texts[end : end + ASR_CHUNK])
            pieces += chunk
            end += len(chunk)
        stop = asr_window([len(p) for p in pieces], 0, budget)
        ids = [t for p in pieces[:stop] for t in p]
        return ids, (float(item.starts[first]), float(item.ends[first : first + stop].max()))


def build_pretrain_dataset(cfg: DataConfig, mode: str, tokenizer, seed: int = 0) -> PretrainDataset:
    """Parse and check everything up front; DataError (one line) on a user mistake."""
    if mode not in MODES:
        raise DataError(f"model.mode must be videobert or cbt, not {mode!r}")
    cfg.validate()
    for name in ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id"):
        if getattr(tokenizer, name, None) is None:
            raise DataError(f"the tokenizer ({cfg.tokenizer}) has no {name[:-9].upper()} token; use a BERT "
                            f"WordPiece tokenizer")
    vocab = None
    if mode == "videobert":
        if not cfg.vocab:
            raise DataError("model.mode=videobert needs data.vocab, a visual vocabulary directory "
                            "(make one with `videolm tokenize fit STORE -o VOCAB`)")
        vocab = load_vocabulary(cfg.vocab)

    stores: dict[str, FeatureStore] = {}
    token_stores: dict[str, TokenStore] = {}
    sources, missing, bad_rows = [], [], []
    for i, scfg in enumerate(cfg.sources):
        root = scfg.store or cfg.store
        if root not in stores:
            store = open_feature_store(root)
            first = next(iter(stores.values()), None)
            if first is not None and store.dim != first.dim:
                raise DataError(f"{root}: features are {store.dim}-dim but {first.root} has {first.dim}-dim "
                                f"features; all sources must use one feature space")
            if vocab is not None:
                try:
                    vocab.check_store(store)
                except TokenizeError as err:
                    raise DataError(str(err)) from None
            stores[root] = store
        store = stores[root]
        tokens_dir = None
        if vocab is not None:
            tokens_dir = scfg.tokens or default_tokens_dir(root, cfg.vocab)
            if tokens_dir not in token_stores:
                token_stores[tokens_dir] = open_tokens(tokens_dir, store, vocab, cfg.vocab, f"data.sources.{i}.tokens")
        source, bad, gone = load_source(i, scfg, store, tokens_dir, cfg.max_missing_fraction)
        if vocab is not None:
            check_tokens_cover(token_stores[tokens_dir], source, store, cfg.vocab)
        sources.append(source)
        bad_rows += bad
        missing += gone
    dataset = PretrainDataset(cfg, mode, tokenizer, seed, sources, stores, vocab, missing, bad_rows)
    dataset._tokens.update(token_stores)
    log.debug("pre-training data: %d sources, %d examples, %d per epoch, %d bad rows, %d rows without features",
             len(sources), sum(dataset.sizes), len(dataset), len(bad_rows), len(missing))
    return dataset
