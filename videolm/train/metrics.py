"""Training metrics: one JSON object per logged step, and a loss-curve PNG.

``metrics.jsonl`` rows::

    {"step": 10, "loss": 7.12, "mlm": 6.9, "visual": 2.3, "align": 0.69, "contrastive": 1.1,
     "lr": 9.9e-05, "grad_norm": 3.2, "examples_per_s": 41.0, "tokens_per_s": 2900.0, "time": ...}

Loss values and ``grad_norm`` are means over the steps since the previous
row (``train.log_every`` steps) and over ranks; ``lr`` is the last step's.
On resume, rows after the checkpoint's step are dropped (rewritten
atomically), so the file reads as one uninterrupted run (row for row when
``save_every`` is a multiple of ``log_every``, as in the shipped configs).
"""

from __future__ import annotations

import json
import logging
import os

from videolm.fileio import atomic_savefig, atomic_write_jsonl

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "mlm", "visual", "align", "contrastive")


class MetricsLog:
    def __init__(self, path: str):
        self.path = path

    def rows(self) -> list[dict]:
        """The rows written; a last line cut short (a kill or a full disk during
        the append) is dropped with a warning, so the run still resumes."""
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.strip()]
        rows = []
        for n, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except ValueError:
                if n < len(lines):
                    raise ValueError(f"{self.path}:{n}: not a metrics row (not JSON)") from None
                log.warning("%s:%d: a last row cut short (the run was stopped while writing it); dropped",
                            self.path, n)
        return rows

    def truncate_after(self, step: int) -> None:
        if os.path.exists(self.path):
            atomic_write_jsonl(self.path, [r for r in self.rows() if r.get("step", 0) <= step])

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


def plot_losses(metrics_path: str, png_path: str, title: str | None = None) -> str:
    """Loss curves (total and each objective) against step; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = MetricsLog(metrics_path).rows()
    keys = [k for k in LOSS_KEYS if any(k in r for r in rows)]
    # validation rows (videolm.eval.validation): R@K per direction, beside the losses
    val_keys = sorted({k for r in rows for k in r if k.startswith("val/") and k.endswith("/R@1") and "/mean/" not in k})
    heights = [3, 1] + ([2] if val_keys else [])
    fig, axes = plt.subplots(len(heights), 1, figsize=(8, 6 + 2 * bool(val_keys)), sharex=True,
                             gridspec_kw={"height_ratios": heights})
    ax, ax_lr = axes[0], axes[1]
    if val_keys:
        ax_val = axes[2]
        for key in val_keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax_val.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=key[4:])
        ax_val.set_ylabel("validation R@K (%)")
        ax_val.grid(alpha=0.3)
        ax_val.legend(fontsize=7, ncol=3)
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, linewidth=2.0 if key == "loss" else 1.2)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if keys:
        ax.legend()
    ax.set_title(title or os.path.basename(os.path.dirname(os.path.abspath(metrics_path))))
    lr = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    ax_lr.plot([p[0] for p in lr], [p[1] for p in lr], color="grey")
    ax_lr.set_ylabel("lr")
    (axes[-1]).set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, png_path)
    plt.close(fig)
    return png_path
