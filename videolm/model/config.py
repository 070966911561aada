"""ModelConfig: every size, switch and weight of the joint transformer and its objectives.

An objective whose weight is 0 is switched off: its head still exists (so a
checkpoint loads either way) but its forward work is skipped and its key is
absent from ``PretrainOutput.losses``.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from videolm.model.errors import ModelError

MODES = ("videobert", "cbt")
ARCHS = ("single_stream", "two_stream")
MASKED_CONTEXTS = ("cross", "own")
ALIGN_LOSSES = ("bce", "nce", "listwise")
ALIGN_HARD_SAMPLING = ("hardest", "softmax")  # how the hard negative is picked (videolm.model.negatives)
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
MIN_TEMPERATURE = 0.01  # the learned contrastive temperature never goes below this (CLIP's logit scale <= 100)
WEIGHTS = ("mlm_weight", "visual_weight", "align_weight", "contrastive_weight")
# What makes two models the same network (init_from needs them to agree): the keys that
# shape a parameter or change the forward. DATA_KEYS come from the tokenizer and the store.
ARCHITECTURE_KEYS = ("mode", "arch", "hidden_size", "num_layers", "num_heads", "intermediate_size", "hidden_act",
                     "layer_norm_eps", "max_positions", "type_vocab_size", "text_layers", "visual_layers",
                     "cross_layers", "embed_dim")
DATA_KEYS = ("text_vocab_size", "pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id",
             "visual_vocab_size", "visual_pad_id", "visual_mask_id", "feature_dim")


@dataclass
class ModelConfig:
    mode: str = "videobert"              # videobert: visual-word ids | cbt: raw clip features
    arch: str = "single_stream"          # single_stream: one joint stack | two_stream: text + visual stacks + cross layers
    # transformer (BERT names in brackets where they differ)
    hidden_size: int = 768
    num_layers: int = 12                 # [num_hidden_layers]
    num_heads: int = 12                  # [num_attention_heads]
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    dropout: float = 0.1                 # [hidden_dropout_prob]
    attention_dropout: float = 0.1       # [attention_probs_dropout_prob]
    layer_norm_eps: float = 1e-12
    max_positions: int = 512             # [max_position_embeddings], counted over real tokens
    type_vocab_size: int = 2             # segments: 0 text, 1 visual
    initializer_range: float = 0.02      # std of the normal init of matrices and tables
    # two_stream depths (num_layers is then unused): text stack, visual stack, then cross-modal layers,
    # each a co-attention layer (ViLBERT's Co-TRM) and one own layer (TRM) per stream
    text_layers: int = 6                 # a BERT of text_layers (+ cross_layers) layers loads into them
    visual_layers: int = 6
    cross_layers: int = 6
    masked_context: str = "cross"        # two_stream: masked objectives on the cross output | "own": each stack alone (CBT)
    # text side (filled from the tokenizer by the trainer)
    text_vocab_size: int = 30522
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    # visual side: VideoBERT words (Vocabulary.vocab_size = words + [PAD] + [MASK]) or CBT features
    visual_vocab_size: int = 0
    visual_pad_id: int = 0
    visual_mask_id: int = 0
    feature_dim: int = 0
    # dual encoder
    embed_dim: int = 256                 # projection of the pooled [CLS] for retrieval
    # initialisation
    init_from: str | None = None         # a saved model directory (save_pretrained): start from all its weights
    init_text_from: str | None = None    # local HF BERT directory (pkg:NAME/dir allowed)
    init_visual_from_centroids: bool = False  # VideoBERT: word table from the vocabulary's centroids
    freeze_visual_table: bool = False    # VideoBERT: keep the word table fixed (words unseen in training stay
                                         # where their centroids put them); needs init_visual_from_centroids
    # objectives: a weight of 0 switches one off
    mlm_weight: float = 1.0
    visual_weight: float = 1.0           # masked visual words (videobert) / masked-feature NCE (cbt)
    align_weight: float = 1.0
    contrastive_weight: float = 1.0
    nce_temperature: float = 0.1         # CBT masked-feature NCE
    nce_normalize: bool = True           # NCE on cosine similarity (L2-normalised pred and target)
    contrastive_temperature: float = 0.07  # initial value; learned, clamped at 1/100 like CLIP
    align_random_negatives: int = 1      # random other-group videos per text
    align_hard_negatives: bool = True    # + one hard other-group video per text and text per video
    align_hard_sampling: str = "hardest"  # hardest: the most similar | softmax: drawn by softmax(cos/τ) (ALBEF)
    align_on_masked_pass: bool = False   # score alignment on the masked joint pass (BERT NSP style), no extra pass
    align_loss: str = "bce"              # bce: pairs with negatives | nce: two_stream, every text x video of the batch (CBT)
                                         # | listwise: softmax over the positive and its hardest candidates (LCE)
    align_list_negatives: int = 3        # listwise: the hardest other-group candidates in each list

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "ModelConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ModelError(f"{source}: unknown model config key {key!r}{hint}")
        return cls(**data)

    def inherit_architecture(self, saved: "ModelConfig", where: str) -> "ModelConfig":
        """This config with the architecture of ``saved`` (model.init_from):
        a key left at its default takes the saved model's value; a key set to
        another value than the saved model's is an error naming it. Objective
        weights, dropout and the other training keys stay this config's own."""
        default, values = ModelConfig(), {}
        for key in ARCHITECTURE_KEYS:
            mine, theirs = getattr(self, key), getattr(saved, key)
            if mine != theirs and mine != getattr(default, key):
                raise ModelError(f"model.{key}={mine} but model.init_from={where} has {key}={theirs}; "
                                 f"remove the key or set it to {theirs}")
            values[key] = theirs
        return dataclasses.replace(self, **values)

    def check_data_keys(self, saved: "ModelConfig", where: str) -> None:
        """The sizes this run's tokenizer and store give must be those the saved model was built with."""
        for key in DATA_KEYS:
            if key == "feature_dim" and self.mode != "cbt" or key.startswith("visual_") and self.mode != "videobert":
                continue
            mine, theirs = getattr(self, key), getattr(saved, key)
            if mine != theirs:
                what = "the store's features" if key == "feature_dim" else (
                    "the visual vocabulary" if key.startswith("visual_") else "data.tokenizer")
                raise ModelError(f"{what} give model.{key}={mine} but model.init_from={where} was built with "
                                 f"{theirs}; use the data it was trained on (its tokenizer, store backbone, vocab/)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def enabled(self, weight_name: str) -> bool:
        return getattr(self, weight_name) > 0

    def check_settings(self) -> None:
        """validate() on the keys a config file sets, before the data fills in
        the sizes it gives (DATA_KEYS, which the trainer takes from the
        tokenizer and the store whatever the file says): load_config runs it
        so that a mistyped model key is reported before torch and the corpus
        load. A config with model.init_from is checked after the saved
        model's architecture is merged in, as before."""
        if self.init_from:
            return
        placeholders = {key: getattr(ModelConfig(), key) for key in DATA_KEYS}
        placeholders.update(visual_vocab_size=3, visual_pad_id=0, visual_mask_id=1, feature_dim=1)
        dataclasses.replace(self, **placeholders).validate()

    def validate(self) -> "ModelConfig":
        """Raise a one-line ModelError naming the first bad key; return self."""
        if self.mode not in MODES:
            raise ModelError(f"model.mode must be videobert or cbt, not {self.mode!r}")
        if self.arch not in ARCHS:
            raise ModelError(f"model.arch must be single_stream or two_stream, not {self.arch!r}")
        if self.masked_context not in MASKED_CONTEXTS:
            raise ModelError(f"model.masked_context must be cross or own, not {self.masked_context!r}")
        if self.align_loss not in ALIGN_LOSSES:
            raise ModelError(f"model.align_loss must be one of {', '.join(ALIGN_LOSSES)}, not {self.align_loss!r}")
        if self.arch == "two_stream":
            for name, least in (("text_layers", 1), ("visual_layers", 0), ("cross_layers", 1)):
                if getattr(self, name) < least:
                    raise ModelError(f"model.{name} must be at least {least} with model.arch=two_stream, "
                                     f"not {getattr(self, name)}")
            if self.masked_context == "own" and self.align_on_masked_pass:
                raise ModelError("model.align_on_masked_pass needs model.masked_context=cross (with own, the "
                                 "masked pass never reaches the cross-modal layers)")
        elif self.masked_context != "cross" or self.align_loss == "nce":
            key = "masked_context" if self.masked_context != "cross" else "align_loss"
            raise ModelError(f"model.{key}={getattr(self, key)} needs model.arch=two_stream")
        if self.align_loss == "nce" and self.align_on_masked_pass:
            raise ModelError("model.align_loss=nce scores every pair of the batch; set model.align_on_masked_pass "
                             "to false")
        if self.align_loss == "listwise":
            if not self.align_hard_negatives:
                raise ModelError("model.align_loss=listwise lists each positive with its hardest candidates; set "
                                 "model.align_hard_negatives to true")
            if self.align_on_masked_pass:
                raise ModelError("model.align_loss=listwise scores its lists on their own joint pass; set "
                                 "model.align_on_masked_pass to false")
            if self.align_list_negatives < 1:
                raise ModelError(f"model.align_list_negatives must be >= 1, not {self.align_list_negatives}")
        if self.freeze_visual_table and not (self.init_visual_from_centroids and self.mode == "videobert"):
            raise ModelError("model.freeze_visual_table needs model.mode=videobert and "
                             "model.init_visual_from_centroids=true (a frozen random table would carry nothing)")
        if self.init_from and self.init_text_from:
            raise ModelError("model.init_from and model.init_text_from are both set; init_from loads the whole "
                             "model, its text side included: remove model.init_text_from")
        if self.hidden_act not in ACTIVATIONS:
            raise ModelError(f"model.hidden_act must be one of {', '.join(ACTIVATIONS)}, not {self.hidden_act!r}")
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions",
                     "text_vocab_size", "embed_dim"):
            if getattr(self, name) < 1:
                raise ModelError(f"model.{name} must be at least 1, not {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ModelError(f"model.hidden_size={self.hidden_size} is not divisible by "
                             f"model.num_heads={self.num_heads}")
        if self.type_vocab_size < 2:
            raise ModelError(f"model.type_vocab_size must be at least 2 (text, visual), not {self.type_vocab_size}")
        for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
            if not 0 <= getattr(self, name) < self.text_vocab_size:
                raise ModelError(f"model.{name}={getattr(self, name)} is outside the text vocabulary "
                                 f"(text_vocab_size={self.text_vocab_size})")
        if self.mode == "videobert":
            if self.visual_vocab_size < 1:
                raise ModelError("model.mode=videobert needs model.visual_vocab_size (the visual vocabulary's "
                                 "vocab_size: words + [PAD] + [MASK])")
            for name in ("visual_pad_id", "visual_mask_id"):
                if not 0 <= getattr(self, name) < self.visual_vocab_size:
                    raise ModelError(f"model.{name}={getattr(self, name)} is outside the visual vocabulary "
                                     f"(visual_vocab_size={self.visual_vocab_size})")
        if self.mode == "cbt" and self.feature_dim < 1:
            raise ModelError("model.mode=cbt needs model.feature_dim (the clip features' dimension)")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ModelError(f"model.{name} must be in [0, 1), not {getattr(self, name)}")
        for name in WEIGHTS:
            if getattr(self, name) < 0:
                raise ModelError(f"model.{name} must be >= 0 (0 switches the objective off), not {getattr(self, name)}")
        if not any(self.enabled(name) for name in WEIGHTS):
            raise ModelError(f"all objective weights are 0 ({', '.join('model.' + n for n in WEIGHTS)}); "
                             "switch at least one on")
        for name in ("nce_temperature", "contrastive_temperature", "layer_norm_eps", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ModelError(f"model.{name} must be > 0, not {getattr(self, name)}")
        if self.contrastive_temperature < MIN_TEMPERATURE:
            raise ModelError(f"model.contrastive_temperature must be >= {MIN_TEMPERATURE} (the clamp, as in CLIP), "
                             f"not {self.contrastive_temperature}")
        if self.align_hard_sampling not in ALIGN_HARD_SAMPLING:
            raise ModelError(f"model.align_hard_sampling must be hardest or softmax, not {self.align_hard_sampling!r}")
        if self.align_random_negatives < 0:
            raise ModelError(f"model.align_random_negatives must be >= 0, not {self.align_random_negatives}")
        return self
