"""Validation during pre-training: a retrieval protocol on a validation split
every ``eval.every`` steps, logged to ``metrics.jsonl`` as ``val/<direction>/R@K``
rows, drawn beside the loss curves, and the best model so far kept in
``RUN/best/`` (by ``eval.metric``).

The model is evaluated as it is in memory (eval mode, no dropout, nothing
drawn from any RNG, so a resumed run still computes exactly the same steps),
on rank 0 only; other ranks wait. Never point ``eval`` at a test split: a
checkpoint picked on the test split reports an optimistic figure.
"""

from __future__ import annotations

import logging
import math
import os
import numpy as np

from videolm.eval.embeddings import Encoder, EvalError
from videolm.eval.evaluate import EvalConfig, evaluate_encoder
from videolm.eval.protocols import ProtocolError, load_protocol
from videolm.eval.validation_config import ValidationConfig
from videolm.fileio import atomic_write_json

log = logging.getLogger(__name__)

PREFIX = "val/"


def flatten_result(result) -> dict[str, float]:
    """{"val/t2v/R@1": ..., "val/mean/R@1": ...} from an EvalResult (dual, or re-ranked when on)."""
    row = "reranked" if result.config.rerank_k else "dual"
    out, by_k = {}, {}
    for name, d in result.directions.items():
        m = d.metrics[row]
        for k, v in m.recall.items():
            out[f"{PREFIX}{name}/R@{k}"] = round(v, 4)
            by_k.setdefault(k, []).append(v)
        out[f"{PREFIX}{name}/MdR"] = m.median_rank
        out[f"{PREFIX}{name}/MnR"] = round(m.mean_rank, 4)
    for k, values in by_k.items():
        out[f"{PREFIX}mean/R@{k}"] = round(float(np.mean(values)), 4)
    return out


class Validator:
    """Built once at the start of a run (the protocol and store are checked then)."""

    def __init__(self, cfg: ValidationConfig, store_root: str, tokenizer, vocab, inputs):
        from videolm.features.store import FeatureStore, StoreError

        cfg.validate()
        self.cfg = cfg
        try:
            self.protocol = load_protocol(cfg.protocol, cfg.annotations, cfg.split)
            self.store = FeatureStore(cfg.store or store_root)
        except (ProtocolError, StoreError) as err:
            raise EvalError(f"eval: {err}") from None
        cfg.check_directions({item.kind for item in self.protocol.items})
        self.tokenizer, self.vocab, self.inputs = tokenizer, vocab, inputs
        self.eval_config = EvalConfig(protocol=cfg.protocol, annotations=cfg.annotations, split=cfg.split,
                                      ks=tuple(cfg.ks), ties=cfg.ties, v2t_rule=cfg.v2t_rule, rerank_k=cfg.rerank_k,
                                      allow_missing=cfg.allow_missing, batch_size=cfg.batch_size).validate()
        self.best: float | None = None

    def due(self, step: int, total: int) -> bool:
        return self.cfg.enabled and (step % self.cfg.every == 0 or step == total)

    def restore_best(self, rows: list[dict]) -> None:
        """The best value so far from a resumed run's metrics rows."""
        key = PREFIX + self.cfg.metric
        values = [r[key] for r in rows if key in r]
        if values:
            self.best = min(values) if self.cfg.lower_is_better() else max(values)

    def run(self, model, step: int) -> dict[str, float]:
        encoder = Encoder(model, self.tokenizer, self.inputs, self.vocab, f"step-{step}", "the model in training",
                          self.cfg.batch_size)
        result = evaluate_encoder(encoder, self.protocol, self.store, self.eval_config)
        values = flatten_result(result)
        key = PREFIX + self.cfg.metric
        if key not in values:
            raise EvalError(f"eval.metric={self.cfg.metric!r} is not among the figures "
                            f"({', '.join(k[len(PREFIX):] for k in values)})")
        return values

    def improved(self, values: dict[str, float]) -> bool:
        value = values[PREFIX + self.cfg.metric]
        if math.isnan(value):
            return False
        better = self.best is None or (value < self.best if self.cfg.lower_is_better() else value > self.best)
        if better:
            self.best = value
        return better

    def save_best(self, model, run_dir: str, step: int, values: dict, tokenizer, vocab, inputs) -> str:
        best_dir = os.path.join(run_dir, "best")
        model.save_pretrained(best_dir, tokenizer=tokenizer, vocabulary=vocab, inputs=inputs)
        atomic_write_json(os.path.join(best_dir, "validation.json"),
                          {"step": step, "metric": self.cfg.metric, "value": values[PREFIX + self.cfg.metric],
                           "protocol": self.cfg.protocol, "split": self.cfg.split, "figures": values})
        log.info("step %d: %s = %.4g, the best so far; saved %s", step, self.cfg.metric,
                 values[PREFIX + self.cfg.metric], best_dir)
        return best_dir
