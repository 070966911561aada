"""Inner-product search over L2-normalised embeddings with faiss.

``flat`` is exact (``IndexFlatIP``). For galleries of millions, ``hnsw``
(``IndexHNSWFlat``, inner product) and ``ivf`` (``IndexIVFFlat`` on a
flat inner-product quantiser, trained on the gallery) are approximate; their
parameters are recorded with the index (``index.json``) and in reports.
Indexes are saved with ``faiss.write_index`` (faiss's own format, no pickle)
beside the cached embeddings and read back with ``faiss.read_index``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace

import numpy as np

from videolm.fileio import atomic_write_json

KINDS = ("flat", "hnsw", "ivf")


@dataclass
class IndexConfig:
    kind: str = "flat"
    hnsw_m: int = 32               # graph degree
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    ivf_nlist: int = 0             # inverted lists; 0 = 4 * sqrt(N), at most N / 39 (faiss's training rule)
    ivf_nprobe: int = 16
    seed: int = 0

    def validate(self) -> "IndexConfig":
        if self.kind not in KINDS:
            raise ValueError(f"--index must be one of {', '.join(KINDS)}, not {self.kind!r}")
        return self


@dataclass
class SearchIndex:
    index: object              # a faiss index
    config: IndexConfig
    size: int
    dim: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (Q, k), best first; ids are gallery rows (-1 where fewer than k)."""
        k = min(k, self.size)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def describe(self) -> dict:
        d = {"kind": self.config.kind, "size": self.size, "dim": self.dim}
        if self.config.kind == "hnsw":
            d.update(M=self.config.hnsw_m, efConstruction=self.config.hnsw_ef_construction,
                     efSearch=int(self.index.hnsw.efSearch))
        elif self.config.kind == "ivf":
            d.update(nlist=int(self.index.nlist), nprobe=int(self.index.nprobe))
        return d

    def save(self, directory: str, name: str = "index") -> str:
        import faiss

        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{name}.faiss")
        tmp = f"{path}.tmp-{os.getpid()}"
        faiss.write_index(self.index, tmp)
        os.replace(tmp, path)
        atomic_write_json(os.path.join(directory, f"{name}.json"), {"config": asdict(self.config), **self.describe()})
        return path


def build_index(gallery: np.ndarray, config: IndexConfig | None = None) -> SearchIndex:
    import faiss

    config = (config or IndexConfig()).validate()
    x = np.ascontiguousarray(gallery, dtype=np.float32)
    n, d = x.shape
    if config.kind == "flat" or n < 2:   # one item: nothing to approximate, and recorded as flat
        config = replace(config, kind="flat")
        index = faiss.IndexFlatIP(d)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        nlist = config.ivf_nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = config.seed
        index.train(x)
        index.nprobe = min(config.ivf_nprobe, nlist)
    index.add(x)
    return SearchIndex(index, config, n, d)


def load_index(directory: str, name: str = "index") -> SearchIndex | None:
    """The saved index, or None when there is none (or it cannot be read)."""
    import faiss

    path, meta_path = os.path.join(directory, f"{name}.faiss"), os.path.join(directory, f"{name}.json")
    if not (os.path.isfile(path) and os.path.isfile(meta_path)):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        index = faiss.read_index(path)
        config = IndexConfig(**meta["config"])
        size, dim = int(meta["size"]), int(meta["dim"])
    except (OSError, ValueError, RuntimeError, KeyError, TypeError):  # damaged: the caller builds it again
        return None
    if config.kind == "hnsw":
        index.hnsw.efSearch = config.hnsw_ef_search
    return SearchIndex(index, config, size, dim)
