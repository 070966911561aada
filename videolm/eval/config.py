"""`videolm evaluate`'s settings (EvalConfig), torch-free, so that the CLI
checks them before it loads a model; the evaluation: ``videolm.eval.evaluate``."""

from __future__ import annotations

from dataclasses import dataclass, field

from videolm.eval.errors import EvalError
from videolm.eval.metrics import DEFAULT_KS, TIES
from videolm.eval.rerank import SCORES

V2T_RULES = ("best-caption", "group-max")


def check_ranking(ties: str, v2t_rule: str, ks, rerank_k: int, batch_size: int, name) -> None:
    """The checks `videolm evaluate` and validation during pre-training share;
    ``name(key)`` spells a key as the user wrote it (``--ties``, ``eval.ties``)."""
    if ties not in TIES:
        raise EvalError(f"{name('ties')} must be one of {', '.join(TIES)}, not {ties!r}")
    if v2t_rule not in V2T_RULES:
        raise EvalError(f"{name('v2t_rule')} must be one of {', '.join(V2T_RULES)}, not {v2t_rule!r}")
    if not ks or any(k < 1 for k in ks):
        raise EvalError(f"{name('ks')} must be numbers >= 1, not {list(ks)}")
    if rerank_k < 0:
        raise EvalError(f"{name('rerank_k')} must be >= 0, not {rerank_k}")
    if batch_size < 1:
        raise EvalError(f"{name('batch_size')} must be >= 1, not {batch_size}")


@dataclass
class EvalConfig:
    protocol: str = "captions"
    annotations: list[str] = field(default_factory=list)
    split: str | None = None
    ks: tuple[int, ...] = DEFAULT_KS
    ties: str = "pessimistic"
    v2t_rule: str = "best-caption"
    rerank_k: int = 0                 # 0: dual encoder only
    rerank_score: str = "align"       # align | align+dual (logit + cos/τ) | align+cosine (BLIP)
    rerank_weight: float = 1.0        # the alignment logit's weight in align+dual / align+cosine
    rerank_batch: int = 64            # pairs per joint pass
    dsl: bool = False
    dsl_temperature: float = 100.0
    untrained: bool = False
    seed: int = 0
    allow_missing: bool = False
    batch_size: int = 64
    device: str = "cpu"

    def validate(self) -> "EvalConfig":
        check_ranking(self.ties, self.v2t_rule, self.ks, self.rerank_k, self.batch_size,
                      lambda key: {"ks": "--k values"}.get(key, "--" + key.replace("_", "-")))
        if self.rerank_score not in SCORES:
            raise EvalError(f"--rerank-score must be one of {', '.join(SCORES)}, not {self.rerank_score!r}")
        if not self.rerank_weight > 0:
            raise EvalError(f"--rerank-weight must be > 0, not {self.rerank_weight}")
        if self.rerank_batch < 1:
            raise EvalError(f"the re-rank batch must be >= 1, not {self.rerank_batch}")
        return self

    def conventions(self) -> dict:
        return {"ties": self.ties, "v2t_rule": self.v2t_rule, "ks": list(self.ks),
                "rerank": {"k": self.rerank_k, "score": self.rerank_score, "weight": self.rerank_weight}
                if self.rerank_k else None,
                # (align+dual adds the dual cosine times the model's contrastive scale 1/tau; see rerank.py)
                "dsl": {"temperature": self.dsl_temperature} if self.dsl else None,
                "similarity": "cosine of L2-normalised dual-encoder embeddings",
                "clip_selection": "all clips of an item (a timed span: the clips it overlaps), thinned to "
                                  "max_visual_len by taking the middle clip of each equal run"}
