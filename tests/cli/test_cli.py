import re
import subprocess
import sys

import pytest

from videolm import __version__
from videolm.features.config import ExtractConfig


def _run(*args):
    return subprocess.run([sys.executable, "-m", "videolm.cli", *args], capture_output=True, text=True)


def test_version():
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"videolm {__version__}"


def test_building_the_parser_does_not_import_torch_or_scipy():
    """What makes --version and --help fast (torch alone takes seconds to import, scipy.stats 2 s)."""
    code = ("import sys; from videolm.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules, 'scipy' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False False", r.stderr


def _run_main(*args):
    """The command in a fresh interpreter, and whether it imported torch."""
    code = "import sys; from videolm.cli import main; rc = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(rc)"
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    return r, r.stdout.strip().splitlines()[-1] == "True"


def test_backbone_names_match_the_backbone_table():
    from videolm.features.backbones import BACKBONES
    from videolm.features.config import BACKBONE_NAMES

    assert tuple(BACKBONES) == BACKBONE_NAMES


def test_help_lists_every_option_with_its_default():
    top = _run("--help")
    assert top.returncode == 0 and "extract" in top.stdout and "store" in top.stdout
    r = _run("extract", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for field, value in vars(ExtractConfig()).items():
        flag = {"window_s": "--window", "stride_s": "--stride", "check_output": "--no-output-check"}.get(
            field, "--" + field.replace("_", "-"))
        assert flag in text, flag
    assert "(default: s3d)" in text and "(default: float16)" in text and "(default: 8)" in text


def test_help_gives_one_default_per_option_and_never_none():
    r = _run("extract", "--help")
    options = r.stdout.split("options:")[1]
    entries = re.split(r"\n  (?=-)", options)  # one entry per option
    assert len(entries) > 20
    for entry in entries:
        assert "(default: None)" not in entry, entry
        assert entry.count("default") <= 1, entry
    stride = next(e for e in entries if e.startswith("--stride"))
    assert "default: the window" in " ".join(stride.split())


def test_no_command_is_a_usage_error():
    r = _run()
    assert r.returncode == 2 and "usage:" in r.stderr


@pytest.mark.parametrize("args, message", [
    # the backbone's own crop (its weights' eval transform) is in the torch-free registry
    (["--short-side", "100"], "--short-side 100 is smaller than the crop 224 (--crop): "
                              "the crop must fit inside the resized frame"),
    (["--window", "0"], "--window must be > 0 seconds, got 0.0"),
    (["--frames", "0"], "--frames must be >= 1, got 0"),
    (["--videos-per-shard", "0"], "--videos-per-shard must be >= 1, got 0"),
    (["--limit", "-1"], "--limit must be >= 0, got -1"),
])
def test_impossible_settings_are_one_line_usage_errors(tmp_path, args, message):
    """The line comes before torch loads."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    r, imported_torch = _run_main("extract", str(tmp_path / "v"), "-o", str(tmp_path / "s"), *args)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "s").exists()
    assert not imported_torch


@pytest.mark.parametrize("name, text, overrides, message", [
    ("missing.yaml", None, [], "{path}: no such config file"),
    ("run.yaml", "model:\n  mode: cbt\n", ["model.nope=1"],
     "override 'model.nope=1': unknown key 'model.nope' (did you mean 'model.mode'?)"),
    ("run.yaml", "model:\n  mode: cbt\n", ["eval.every=5"],
     "override 'eval.every=5': eval.every is set but eval.protocol is empty; name a protocol (e.g. captions)"),
    ("run.yaml", "model:\n  mode: cbt\neval:\n  ties: worst\n", [],
     "{path}: eval.ties must be one of pessimistic, optimistic, mean, not 'worst'"),
])
def test_a_bad_pretrain_config_is_one_line_before_torch_loads(tmp_path, name, text, overrides, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    r, imported_torch = _run_main("pretrain", str(path), *overrides)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: " + message.format(path=path)
    assert not imported_torch


@pytest.mark.parametrize("args, message", [
    (["evaluate", "{tmp}/m", "--protocol", "captions", "--store", "{tmp}/s"],
     "protocol captions needs --annotations MANIFEST.jsonl (one or more)"),
    (["evaluate", "{tmp}/m", "--protocol", "captions", "--annotations", "{tmp}/bad.jsonl", "--store", "{tmp}/s"],
     "{tmp}/bad.jsonl:2: not valid JSON (Expecting ',' delimiter)"),
    (["evaluate", "{tmp}/m", "--protocol", "captions", "--annotations", "{tmp}/ok.jsonl", "--store", "{tmp}/s"],
     "{tmp}/s: not a feature store (no meta.json)"),
    (["evaluate", "{tmp}/m", "--protocol", "captions", "--annotations", "{tmp}/ok.jsonl", "--store", "{tmp}/s",
      "--rerank-k", "-1"], "--rerank-k must be >= 0, not -1"),
    (["evaluate", "{tmp}/m", "--protocol", "captions", "--annotations", "{tmp}/ok.jsonl", "--store", "{tmp}/s",
      "--batch-size", "0"], "--batch-size must be >= 1, not 0"),
    (["search", "{tmp}/m", "{tmp}/s", "a dog"], "{tmp}/s: not a feature store (no meta.json)"),
    (["zeroshot", "{tmp}/m", "--store", "{tmp}/s", "--labels", "{tmp}/ok.jsonl"],
     "{tmp}/s: not a feature store (no meta.json)"),
])
def test_evaluation_usage_errors_are_one_line_before_torch_loads(tmp_path, args, message):
    """A missing annotation file, a bad manifest line or a missing store is found before the model loads."""
    (tmp_path / "ok.jsonl").write_text('{"video_id": "a", "caption": "a dog runs"}\n')
    (tmp_path / "bad.jsonl").write_text('{"video_id": "a", "caption": "a dog runs"}\n{"video_id": 3\n')
    r, imported_torch = _run_main(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2
    assert r.stderr.strip() == "error: " + message.format(tmp=tmp_path)
    assert not imported_torch


def test_a_folder_with_no_media_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r, imported_torch = _run_main("extract", str(tmp_path / "empty"), "-o", str(tmp_path / "s"))
    assert r.returncode == 2 and not (tmp_path / "s").exists() and not imported_torch
    assert r.stderr.startswith(f"error: {tmp_path / 'empty'}: no video or image files") and ".mp4" in r.stderr


def test_a_reader_that_goes_away_is_no_traceback(sample_store):
    """`videolm store info S | head -1`: the pipe closes before the command writes; it stops quietly."""
    proc = subprocess.Popen([sys.executable, "-m", "videolm.cli", "store", "info", str(sample_store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_the_sanity_set_has_its_own_usage():
    """`python -m videolm.demo --help` describes the sanity set (it once printed extract's usage)."""
    r = subprocess.run([sys.executable, "-m", "videolm.demo", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m videolm.demo [-h] [--train] [root]")
    r = subprocess.run([sys.executable, "-m", "videolm.demo", "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().endswith("error: unrecognized arguments: --bogus")
