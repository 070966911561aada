import subprocess
import sys

from videolm import __version__
from videolm.features.extract import ExtractConfig


def _run(*args):
    return subprocess.run([sys.executable, "-m", "videolm.cli", *args], capture_output=True, text=True)


def test_version():
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"videolm {__version__}"


def test_help_lists_every_option_with_its_default():
    top = _run("--help")
    assert top.returncode == 0 and "extract" in top.stdout and "store" in top.stdout
    r = _run("extract", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for field, value in vars(ExtractConfig()).items():
        flag = {"window_s": "--window", "stride_s": "--stride"}.get(field, "--" + field.replace("_", "-"))
        assert flag in text, flag
    assert "(default: s3d)" in text and "(default: float16)" in text and "(default: 8)" in text


def test_no_command_is_a_usage_error():
    r = _run()
    assert r.returncode == 2 and "usage:" in r.stderr
