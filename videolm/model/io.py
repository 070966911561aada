"""Files: our models in the Hugging Face layout, and BERT checkpoints read into the text side.

A model directory (``save_pretrained`` / ``from_pretrained``)::

    config.json            model_type "videolm", format_version, videolm_version, every ModelConfig field
    model.safetensors      the state dict (tied decoders hold no tensor of their own, so ties survive)
    tokenizer files        tokenizer.save_pretrained(dir), when a tokenizer is given
    vocab/                 VideoBERT mode: the visual vocabulary (Vocabulary.save_pretrained)
    preprocessor_config.json  how the inputs were built in training (InputSettings), so that
                           evaluation rebuilds them from the model directory alone

The directory is built under a temporary name and renamed into place, so a
reader never sees half a model. Nothing here unpickles: safetensors, or
``torch.load(weights_only=True)`` for a BERT that only has pytorch_model.bin.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle

from dataclasses import dataclass

import torch

from videolm import __version__
from videolm.errors import first_line
from videolm.fileio import atomic_directory, atomic_write_json
from videolm.model.config import ModelConfig
from videolm.model.errors import ModelError

log = logging.getLogger(__name__)

MODEL_TYPE = "videolm"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_DIR = "vocab"
META_KEYS = ("model_type", "format_version", "videolm_version")

# BERT config.json key -> ModelConfig key; these must agree to load a checkpoint
BERT_CONFIG_KEYS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "text_vocab_size",
    "type_vocab_size": "type_vocab_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
}
# BERT tensor name -> ours, per layer ("{i}") and for the embeddings
BERT_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "word_embeddings.weight",
    "embeddings.position_embeddings.weight": "position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "segment_embeddings.weight",
    "embeddings.LayerNorm.weight": "embedding_norm.weight",
    "embeddings.LayerNorm.bias": "embedding_norm.bias",
}
BERT_LAYER = {
    "attention.output.dense": "attention.out",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
# BERT's MLM head (BertForMaskedLM, BertForPreTraining) -> VideoLMForPretraining.mlm_head
BERT_MLM_HEAD = {
    "cls.predictions.transform.dense.weight": "mlm_head.transform.dense.weight",
    "cls.predictions.transform.dense.bias": "mlm_head.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "mlm_head.transform.norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "mlm_head.transform.norm.bias",
    "cls.predictions.bias": "mlm_head.bias",
}


# ------------------------------------------------------------------ BERT checkpoints


def read_bert_checkpoint(path: str) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config.json, tensors with any ``bert.`` prefix and gamma/beta names
    normalised, resolved directory) of a local Hugging Face BERT."""
    from videolm.text.tokenizer import TextError, resolve_path

    try:
        directory = resolve_path(path)
    except TextError as err:
        raise ModelError(str(err)) from None
    config_path = os.path.join(directory, "config.json")
    if not os.path.isdir(directory):
        raise ModelError(f"{directory}: no such BERT checkpoint directory")
    if not os.path.isfile(config_path):
        raise ModelError(f"{directory}: not a Hugging Face checkpoint (no config.json)")
    config = _read_json(config_path)
    if config.get("model_type") not in ("bert", None) or config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelError(f"{config_path}: model_type {config.get('model_type')!r} with "
                         f"{config.get('position_embedding_type', 'absolute')} positions; need a BERT with "
                         "absolute positions")
    safetensors_path = os.path.join(directory, "model.safetensors")
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.isfile(safetensors_path):
        tensors = _load_safetensors(safetensors_path, "cpu")
    elif os.path.isfile(bin_path):
        try:
            tensors = torch.load(bin_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
            raise ModelError(f"{bin_path}: cannot read ({first_line(err)})") from None
    else:
        raise ModelError(f"{directory}: no model.safetensors (or pytorch_model.bin)")
    normalised = {}
    for name, value in tensors.items():
        name = name[len("bert."):] if name.startswith("bert.") else name
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        normalised[name] = value
    return config, normalised, directory


def bert_to_joint(bert_config: dict, tensors: dict[str, torch.Tensor], config: ModelConfig, where: str,
                  layer_prefixes: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Map BERT tensors to JointTransformer names: (mapped, unused). The
    three attention projections are concatenated into the fused QKV.
    layer_prefixes: where BERT layer i goes (default ``layers.{i}.``; the
    two-stream model puts upper layers into its cross-modal layers)."""
    layer_prefixes = layer_prefixes or [f"layers.{i}." for i in range(config.num_layers)]
    differ = [f"{ours}={getattr(config, ours)} (checkpoint {theirs}={bert_config[theirs]})"
              for theirs, ours in BERT_CONFIG_KEYS.items()
              if theirs in bert_config and bert_config[theirs] != getattr(config, ours)]
    max_pos = bert_config.get("max_position_embeddings", config.max_positions)
    if config.max_positions > max_pos:
        differ.append(f"max_positions={config.max_positions} (checkpoint max_position_embeddings={max_pos})")
    if differ:
        raise ModelError(f"{where}: the model config differs from the checkpoint in model." + ", model.".join(differ)
                         + "; set those keys to the checkpoint's values")
    used, mapped = set(), {}

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise ModelError(f"{where}: checkpoint has no tensor {name!r}")
        used.add(name)
        return tensors[name]

    for theirs, ours in BERT_EMBEDDINGS.items():
        mapped[ours] = take(theirs)
    mapped["position_embeddings.weight"] = mapped["position_embeddings.weight"][: config.max_positions]
    for i, target in enumerate(layer_prefixes):
        prefix = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = (take(f"{prefix}attention.self.{p}.{kind}") for p in ("query", "key", "value"))
            mapped[f"{target}attention.qkv.{kind}"] = torch.cat([q, k, v], 0)
            for theirs, ours in BERT_LAYER.items():
                mapped[f"{target}{ours}.{kind}"] = take(f"{prefix}{theirs}.{kind}")
    unused = {name: value for name, value in tensors.items() if name not in used}
    return mapped, unused


# ------------------------------------------------------------------ our model directories


@dataclass
class InputSettings:
    """How a model's inputs are built (Hugging Face keeps this in
    preprocessor_config.json): what evaluation needs besides the weights."""

    max_text_len: int = 64          # text tokens incl. [CLS]/[SEP]; longer text keeps its first tokens
    max_visual_len: int = 32        # clips per item; more are thinned deterministically at evaluation
    eval_clip_selection: str = "uniform"  # the middle clip of each of max_visual_len equal runs
    train_clip_sampling: str = "spread"   # what training did (data.clip_sampling), for the record
    align_min_overlap: float = 0.5  # a timed span takes the clips it overlaps by this x the shorter
    feature_store: dict | None = None  # backbone, weights, clip_spec, dim of the store it was trained on

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_input_settings(directory: str) -> tuple[InputSettings, bool]:
    """(settings, found): a model saved before preprocessor_config.json existed gets the defaults."""
    path = os.path.join(directory, PREPROCESSOR_FILE)
    if not os.path.isfile(path):
        return InputSettings(), False
    data = _read_json(path)
    names = {f.name for f in dataclasses.fields(InputSettings)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ModelError(f"{path}: unknown key {unknown[0]!r}")
    return InputSettings(**data), True


def is_model_dir(directory: str) -> bool:
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path) as f:
            return json.load(f).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def save_pretrained(model: torch.nn.Module, config: ModelConfig, directory: str, tokenizer=None,
                    vocabulary=None, inputs: InputSettings | None = None) -> str:
    """Write config.json + model.safetensors (+ tokenizer files, + vocab/ in
    VideoBERT mode, + preprocessor_config.json) into ``directory``, replacing
    an earlier model there."""
    from safetensors.torch import save_file

    directory = os.path.normpath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ModelError(f"{directory}: exists and is not a directory")
    if os.path.isdir(directory) and os.listdir(directory) and not is_model_dir(directory):
        raise ModelError(f"{directory}: exists and is not a videolm model directory; choose another")
    if vocabulary is not None and config.mode == "videobert" and vocabulary.vocab_size != config.visual_vocab_size:
        raise ModelError(f"the vocabulary has {vocabulary.vocab_size} tokens but model.visual_vocab_size="
                         f"{config.visual_vocab_size}; save the vocabulary the model was trained with")
    with atomic_directory(directory) as tmp:
        tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
        save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt", "model_type": MODEL_TYPE})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if vocabulary is not None and config.mode == "videobert":
            where = vocabulary.path  # save_pretrained repoints it at the copy; the caller's stays as it was
            vocabulary.save_pretrained(os.path.join(tmp, VOCAB_DIR))
            vocabulary.path = where
        if inputs is not None:
            atomic_write_json(os.path.join(tmp, PREPROCESSOR_FILE), inputs.to_dict())
        # written last, after the tokenizer (whose save must not leave a config.json of its own)
        atomic_write_json(os.path.join(tmp, CONFIG_FILE), {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION,
                                                           "videolm_version": __version__, **config.to_dict()})
    log.info("saved the model to %s", directory)
    return directory


def read_config(directory: str) -> ModelConfig:
    """The ModelConfig of a saved model directory; one-line ModelError otherwise."""
    if not os.path.isdir(directory):
        raise ModelError(f"{directory}: no such model directory")
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ModelError(f"{directory}: not a videolm model directory (no {CONFIG_FILE})")
    data = _read_json(path)
    if data.get("model_type") != MODEL_TYPE:
        raise ModelError(f"{path}: not a videolm model (model_type {data.get('model_type')!r})")
    if not isinstance(data.get("format_version"), int) or data["format_version"] > FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {data.get('format_version')!r}; this videolm reads up to "
                         f"{FORMAT_VERSION} (upgrade videolm)")
    try:
        return ModelConfig.from_dict({k: v for k, v in data.items() if k not in META_KEYS}, source=path).validate()
    except ModelError as err:
        message = str(err)
        raise ModelError(message if message.startswith(path) else f"{path}: {message}") from None
    except TypeError as err:
        raise ModelError(f"{path}: {err}") from None


def load_state(directory: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise ModelError(f"{path}: missing; the model directory is incomplete")
    return _load_safetensors(path, device)


def check_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """One line naming the first missing, unexpected or misshapen tensor."""
    own = model.state_dict()
    missing = [name for name in own if name not in tensors]
    unexpected = [name for name in tensors if name not in own]
    if missing:
        raise ModelError(f"{where}: missing tensor {missing[0]!r} ({len(missing)} missing); "
                         "the file does not match its config.json")
    if unexpected:
        raise ModelError(f"{where}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected); "
                         "the file does not match its config.json")
    for name, value in tensors.items():
        if value.shape != own[name].shape:
            raise ModelError(f"{where}: tensor {name!r} has shape {tuple(value.shape)}, config.json implies "
                             f"{tuple(own[name].shape)}")


# ------------------------------------------------------------------ helpers


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _load_safetensors(path: str, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"{path}: cannot read ({first_line(err)})") from None
