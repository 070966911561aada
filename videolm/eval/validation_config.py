"""What validation during pre-training does (the ``eval`` section of a run
config); torch-free, so a config file is checked before torch is imported.
The validation itself: ``videolm.eval.validation``."""

from __future__ import annotations

from dataclasses import dataclass, field

from videolm.eval.config import check_ranking
from videolm.eval.errors import EvalError


KIND_DIRECTIONS = {"video": ("t2v", "v2t"), "image": ("t2i", "i2t")}
DIRECTIONS = KIND_DIRECTIONS["video"] + KIND_DIRECTIONS["image"]


@dataclass
class ValidationConfig:
    protocol: str = ""               # "" = no validation; e.g. captions (with annotations), msrvtt-full
    annotations: list[str] = field(default_factory=list)
    split: str = "val"               # never test
    store: str | None = None         # default: data.store
    every: int = 0                   # steps between validations (and at the end); 0 = off
    metric: str = "mean/R@1"         # what picks best/: "DIR/R@K" (e.g. t2v/R@1), "mean/R@K", "DIR/MdR"
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    rerank_k: int = 0
    ties: str = "pessimistic"
    v2t_rule: str = "best-caption"
    allow_missing: bool = False
    batch_size: int = 64
    keep_best: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.protocol) and self.every > 0

    def validate(self) -> None:
        if self.every < 0:
            raise EvalError(f"eval.every must be >= 0, not {self.every}")
        if not self.protocol and self.every:
            raise EvalError("eval.every is set but eval.protocol is empty; name a protocol (e.g. captions)")
        check_ranking(self.ties, self.v2t_rule, self.ks, self.rerank_k, self.batch_size, lambda key: f"eval.{key}")
        if self.protocol and self.split == "test":
            raise EvalError("eval.split=test: validation picks checkpoints, and picking them on the test split "
                            "inflates the reported figure; hold out a validation split")
        name, _, what = self.metric.partition("/")
        if name not in DIRECTIONS + ("mean",) or not (what in ("MdR", "MnR") or
                                                      (what.startswith("R@") and what[2:].isdigit())):
            raise EvalError(f"eval.metric must look like t2v/R@1, mean/R@5 or v2t/MdR (directions "
                            f"{', '.join(DIRECTIONS)}, or mean of R@K), not {self.metric!r}")
        if name == "mean" and not what.startswith("R@"):
            raise EvalError(f"eval.metric={self.metric!r}: mean is of R@K only; name a direction for {what} "
                            f"(e.g. t2v/{what})")
        if what.startswith("R@") and int(what[2:]) not in self.ks:
            raise EvalError(f"eval.metric={self.metric!r}: {what} is not among eval.ks {list(self.ks)}")

    def check_directions(self, kinds: set[str]) -> None:
        """The metric's direction exists for a protocol of items of ``kinds``
        (video: t2v, v2t; image: t2i, i2t), checked when the protocol loads,
        before the first step, not at the first validation."""
        name = self.metric.partition("/")[0]
        have = [d for kind in sorted(kinds) for d in KIND_DIRECTIONS[kind]]
        if name != "mean" and name not in have:
            raise EvalError(f"eval.metric={self.metric!r}: the protocol's items give {', '.join(have)}, not {name}")

    def lower_is_better(self) -> bool:
        return self.metric.endswith(("MdR", "MnR"))
