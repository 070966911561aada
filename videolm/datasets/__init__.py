"""Demo data that ships with the toolkit: the synthetic video-caption world
(``videolm.datasets.synthetic``), generated from a seed."""

from videolm.datasets.synthetic import (
    PRESETS,
    TINY,
    DatasetError,
    GeneratedSet,
    SyntheticConfig,
    generate,
    make_plan,
)

__all__ = ["PRESETS", "TINY", "DatasetError", "GeneratedSet", "SyntheticConfig", "generate", "make_plan"]
