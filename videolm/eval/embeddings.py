"""Model inputs and embeddings for evaluation, rebuilt from the model directory alone.

``Encoder.from_pretrained(MODEL)`` reads the weights, the tokenizer, the
visual vocabulary (VideoBERT) and ``preprocessor_config.json`` (max text and
visual lengths) that ``save_pretrained`` wrote, so nothing else is needed to
rebuild what the model saw in training:

- text: ``[CLS] wordpieces [SEP]``, cut to ``max_text_len`` as in training;
- visual: the item's clips (a timed span takes the clips it overlaps, by the
  training alignment rule); more than ``max_visual_len`` are thinned
  **deterministically** to the middle clip of each of ``max_visual_len`` equal
  runs (training draws a random clip per run); VideoBERT mode encodes the
  clip features with the model's own vocabulary (the same ids
  ``tokenize encode`` stores); clips whose features are not finite are left
  out, as in training.

Embeddings are computed in eval mode under ``torch.inference_mode``, in
batches sorted by length (the model is padding-invariant, so the order only
saves padding), and cached in ``CACHE/<key>.npz`` where the key hashes the
model's files, the store entries used, the inputs and the settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from videolm.data.align import align_span
from videolm.eval.errors import EvalError  # noqa: F401  (importers of EvalError from here keep working)
from videolm.fileio import atomic_save_npz
from videolm.model import io
from videolm.model.errors import ModelError
from videolm.model.pretraining import VideoLMForPretraining

log = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of inputs just finished


def uniform_clips(indices: np.ndarray, max_len: int) -> np.ndarray:
    """At most ``max_len`` of the indices, in order: the middle one of each of ``max_len`` equal runs."""
    n = len(indices)
    if n <= max_len:
        return indices
    lo = np.arange(max_len) * n // max_len
    hi = (np.arange(max_len) + 1) * n // max_len
    return indices[(lo + hi - 1) // 2]


def file_digest(path: str, h=None) -> "hashlib._Hash":
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


@dataclass
class Encoder:
    """A model with what it needs to build its own inputs."""

    model: VideoLMForPretraining
    tokenizer: object
    settings: io.InputSettings
    vocab: object | None = None     # VideoBERT: videolm.tokenize.vocab.Vocabulary
    fingerprint: str = ""           # of the model's files (or of an untrained init)
    name: str = ""
    batch_size: int = 64

    @classmethod
    def from_pretrained(cls, directory: str, device: str = "cpu", untrained_seed: int | None = None,
                        batch_size: int = 64) -> "Encoder":
        """The saved model; with ``untrained_seed`` the same architecture freshly
        initialised (torch seed ``untrained_seed``, no BERT init): the floor."""
        from videolm.text.tokenizer import TextError, load_tokenizer
        from videolm.tokenize.vocab import TokenizeError, Vocabulary

        try:
            config = io.read_config(directory)
            settings, found = io.read_input_settings(directory)
            if untrained_seed is None:
                model = VideoLMForPretraining.from_pretrained(directory, device)
            else:
                torch.manual_seed(untrained_seed)
                model = VideoLMForPretraining(config, load_init=False).to(device).eval()
        except ModelError as err:
            raise EvalError(str(err)) from None
        if not found:
            log.warning("%s: no %s (saved by an older videolm); using max_text_len=%d, max_visual_len=%d",
                        directory, io.PREPROCESSOR_FILE, settings.max_text_len, settings.max_visual_len)
        try:
            tokenizer = load_tokenizer(directory)
        except TextError:
            raise EvalError(f"{directory}: no tokenizer files; save the model with its tokenizer "
                            "(videolm pretrain does)") from None
        vocab = None
        if config.mode == "videobert":
            vocab_dir = os.path.join(directory, io.VOCAB_DIR)
            try:
                vocab = Vocabulary.from_pretrained(vocab_dir)
            except TokenizeError as err:
                raise EvalError(f"{directory}: VideoBERT model without its visual vocabulary ({err})") from None
        from videolm.text.tokenizer import TOKENIZER_FILES

        h = hashlib.sha256()   # every file the embeddings depend on: weights, tokenizer, visual vocabulary
        vocab_files = sorted(os.path.join(io.VOCAB_DIR, f) for f in os.listdir(os.path.join(directory, io.VOCAB_DIR))
                             ) if vocab is not None else []
        for name in (io.CONFIG_FILE, io.WEIGHTS_FILE, io.PREPROCESSOR_FILE, *TOKENIZER_FILES, "special_tokens_map.json",
                     *vocab_files):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                h.update(name.encode())
                file_digest(path, h)
        fingerprint = h.hexdigest()[:16] if untrained_seed is None else f"untrained-{untrained_seed}-{h.hexdigest()[:8]}"
        return cls(model, tokenizer, settings, vocab, fingerprint, directory, batch_size)

    @property
    def config(self):
        return self.model.config

    def dual_scale(self) -> float:
        """The learned contrastive scale 1/τ (what turns a cosine into the InfoNCE logit)."""
        with torch.no_grad():
            return float(self.model.contrastive_scale())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- inputs

    def check_store(self, store) -> None:
        """The store's features must be what the model reads."""
        from videolm.tokenize.vocab import TokenizeError

        if self.config.mode == "cbt":
            if store.dim != self.config.feature_dim:
                raise EvalError(f"{store.root}: features are {store.dim}-dim but the model {self.name} reads "
                                f"{self.config.feature_dim}-dim features; extract with the backbone it was "
                                "trained on")
        else:
            try:
                self.vocab.check_store(store)
            except TokenizeError as err:
                raise EvalError(f"{err} (the model's visual vocabulary is {self.name}/{io.VOCAB_DIR})") from None
        recorded = self.settings.feature_store or {}
        trained = recorded.get("backbone")
        if trained and store.meta.get("backbone") != trained:
            raise EvalError(f"{store.root}: features come from {store.meta.get('backbone')!r} but the model was "
                            f"trained on {trained!r} features")
        # the same dim can hold other vectors (extract --temporal mean+diff / mean+flow); absent means "mean"
        mode, trained_mode = store.meta.get("temporal") or "mean", recorded.get("temporal") or "mean"
        if trained and mode != trained_mode:
            raise EvalError(f"{store.root}: features were extracted with --temporal {mode} but the model was "
                            f"trained on --temporal {trained_mode} features")

    def text_inputs(self, texts: list[str]) -> list[np.ndarray]:
        limit = self.settings.max_text_len - 2
        ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        return [np.array([cls, *row[:limit], sep], dtype=np.int64) for row in ids]

    def clips_of(self, store, media_id: str, span: tuple[float, float] | None) -> np.ndarray:
        times = store.clip_times(media_id)
        clips = np.arange(len(times)) if span is None else align_span(times, span[0], span[1],
                                                                      self.settings.align_min_overlap)
        return uniform_clips(clips, self.settings.max_visual_len)

    def visual_input(self, features: np.ndarray) -> np.ndarray:
        """(v,) word ids (VideoBERT) or (v, D) float32 features (CBT) of the chosen clips' features."""
        feats = np.asarray(features, dtype=np.float32)
        feats = feats[np.isfinite(feats).all(axis=1)]
        if self.config.mode == "videobert":
            return np.asarray(self.vocab.encode(feats).ids, dtype=np.int64) if len(feats) else np.zeros(0, np.int64)
        return feats

    def visual_inputs(self, store, items) -> list[np.ndarray]:
        """One input per item (``media_id``, ``span``)."""
        out = []
        for item in items:
            clips = self.clips_of(store, item.media_id, item.span)
            out.append(self.visual_input(store.features(item.media_id)[clips]))
        return out

    # -- padded batches

    def _text_batch(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), T), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.from_numpy(r)
            attention[i, :len(r)] = True
        return ids.to(self.device), attention.to(self.device)

    def _visual_batch(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        T = max(1, max(len(r) for r in rows))
        attention = torch.zeros((len(rows), T), dtype=torch.bool)
        if self.config.mode == "videobert":
            visual = torch.full((len(rows), T), self.config.visual_pad_id, dtype=torch.long)
        else:
            visual = torch.zeros((len(rows), T, self.config.feature_dim), dtype=torch.float32)
        for i, r in enumerate(rows):
            if len(r):
                visual[i, :len(r)] = torch.from_numpy(r)
                attention[i, :len(r)] = True
        return visual.to(self.device), attention.to(self.device)

    def _batched(self, rows: list, run, progress: Progress | None, batch_size: int | None = None,
                 lengths: list[int] | None = None) -> np.ndarray:
        """``run`` over batches of rows sorted by length (the model is padding-invariant,
        so the order only saves padding); results back in the rows' order."""
        order = np.argsort([len(r) for r in rows] if lengths is None else lengths, kind="stable")
        out = [None] * len(rows)
        size = batch_size or self.batch_size
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(rows), size):
                    idx = order[start:start + size]
                    result = run([rows[i] for i in idx]).float().cpu().numpy()
                    for j, i in enumerate(idx):
                        out[i] = result[j]
                    if progress is not None:
                        progress(len(idx))
        finally:
            self.model.train(was_training)
        return np.stack(out) if out else np.zeros((0,), np.float32)

    # -- embeddings and scores

    def embed_texts(self, rows: list[np.ndarray], progress: Progress | None = None) -> np.ndarray:
        """(N, embed_dim) float32, L2-normalised."""
        return self._batched(rows, lambda b: self.model.encode_text(*self._text_batch(b)), progress)

    def embed_visuals(self, rows: list[np.ndarray], progress: Progress | None = None) -> np.ndarray:
        return self._batched(rows, lambda b: self.model.encode_video(*self._visual_batch(b)), progress)

    def alignment_scores(self, texts: list[np.ndarray], visuals: list[np.ndarray], pairs: np.ndarray,
                         progress: Progress | None = None, batch_size: int | None = None) -> np.ndarray:
        """(P,) alignment logits of (text index, visual index) pairs, in joint passes of ``batch_size`` pairs."""
        rows = [(texts[t], visuals[v]) for t, v in pairs]

        def run(batch):
            t_ids, t_att = self._text_batch([r[0] for r in batch])
            v, v_att = self._visual_batch([r[1] for r in batch])
            return self.model.alignment_score(t_ids, t_att, v, v_att)

        if not rows:
            return np.zeros(0, np.float32)
        return self._batched(rows, run, progress, batch_size, [len(t) + len(v) for t, v in rows])


# ------------------------------------------------------------------ the cache


def store_fingerprint(store, media_ids) -> str:
    """The store's meta and the entries of the media used (so adding other videos keeps the cache)."""
    h = hashlib.sha256(json.dumps(store.meta, sort_keys=True).encode())
    for media_id in sorted(set(media_ids)):
        e = store.entry(media_id)
        h.update(json.dumps([media_id, e.get("shard"), e.get("offset"), e.get("num_clips"), e.get("clip_start"),
                             e.get("clip_end")]).encode())
    return h.hexdigest()[:16]


def cache_key(encoder: Encoder, store, items, texts: list[str]) -> str:
    h = hashlib.sha256()
    h.update(encoder.fingerprint.encode())
    h.update(store_fingerprint(store, [i.media_id for i in items]).encode())
    h.update(json.dumps(encoder.settings.to_dict(), sort_keys=True).encode())
    h.update(json.dumps([[i.media_id, i.span] for i in items]).encode())
    h.update(json.dumps(list(texts)).encode())
    return h.hexdigest()[:24]


class Embedded:
    """Embeddings of one gallery (items) and its captions, and their model
    inputs, built when first asked for (only re-ranking needs them once the
    embeddings come from the cache: a cached search reads no gallery features)."""

    def __init__(self, text_inputs: Callable[[], list[np.ndarray]], visual_inputs: Callable[[], list[np.ndarray]],
                 text: np.ndarray, visual: np.ndarray, cached: bool):
        self._make = {"text": text_inputs, "visual": visual_inputs}
        self._built: dict[str, list[np.ndarray]] = {}
        self.text, self.visual, self.cached = text, visual, cached   # (C, E), (N, E); read from the cache

    def _inputs(self, what: str) -> list[np.ndarray]:
        if what not in self._built:
            self._built[what] = self._make[what]()
        return self._built[what]

    @property
    def text_inputs(self) -> list[np.ndarray]:
        return self._inputs("text")

    @property
    def visual_inputs(self) -> list[np.ndarray]:
        return self._inputs("visual")


def embed(encoder: Encoder, store, items, texts: list[str], cache_dir: str | None,
          progress: Callable[[str, int], Progress] | None = None) -> Embedded:
    """Embeddings of the items and the texts, from the cache when it has them.
    ``progress(what, total)`` returns a per-batch callback (a progress bar)."""
    made = Embedded(lambda: encoder.text_inputs(texts) if texts else [],
                    lambda: encoder.visual_inputs(store, items), None, None, False)
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"embeddings-{cache_key(encoder, store, items, texts)}.npz")
        if os.path.isfile(path):
            try:
                with np.load(path) as data:
                    text, visual = data["text"], data["visual"]
                if len(text) == len(texts) and len(visual) == len(items):
                    log.info("embeddings from the cache %s", path)
                    made.text, made.visual, made.cached = text, visual, True
                    return made
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # cut short, or not an npz
                log.warning("%s: unreadable cache file; recomputing", path)
    bar = progress("texts", len(made.text_inputs)) if progress and texts else None
    text = encoder.embed_texts(made.text_inputs, bar) if texts else np.zeros((0, encoder.config.embed_dim), np.float32)
    bar = progress("visual", len(made.visual_inputs)) if progress else None
    visual = encoder.embed_visuals(made.visual_inputs, bar)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        atomic_save_npz(path, text=text, visual=visual)
    made.text, made.visual = text, visual
    return made
