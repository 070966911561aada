"""Pre-training end to end on the real sample store: both modes, exact resume
after SIGKILL, two-process torchrun, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from videolm.cli import main as cli
from videolm.train.config import load_config
from videolm.train.loop import pretrain
from tests.conftest import free_port


def losses(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    keys = ("step", "loss", "mlm", "visual", "align", "contrastive")
    return [{k: r[k] for k in keys if k in r} for r in rows]


def cli_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "videolm.cli", *map(str, args)]


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_tiny_run_trains_saves_and_reloads(mode, tiny_config, tmp_path):
    from videolm.model.pretraining import VideoLMForPretraining

    path, overrides = tiny_config
    out = tmp_path / mode
    result = pretrain(load_config(path, overrides(out, mode, steps=30, **{"train.save_every": 10, "train.lr": 1e-2})))
    rows = losses(out)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert set(rows[0]) == {"step", "loss", "mlm", "visual", "align", "contrastive"}
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # it learns: masked-LM loss starts near ln(30522) = 10.3 and falls well below
    first, last = sum(r["mlm"] for r in rows[:3]) / 3, sum(r["mlm"] for r in rows[-3:]) / 3
    assert first > 9.0 and last < first - 1.0, (first, last)
    assert os.path.getsize(out / "loss.png") > 1000
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step_00000020", "step_00000030"]
    model = VideoLMForPretraining.from_pretrained(result.model_dir)
    assert model.config.mode == mode
    assert os.path.exists(os.path.join(result.model_dir, "tokenizer_config.json"))
    if mode == "videobert":
        assert os.path.exists(os.path.join(result.model_dir, "vocab", "meta.json"))


def test_resume_after_sigkill_or_ctrl_c_gives_the_same_losses(tiny_config, tmp_path):
    path, overrides = tiny_config
    args = overrides(tmp_path / "ref", "videobert", steps=24, **{"train.save_every": 4})
    ref = subprocess.run(cli_cmd("pretrain", path, *args, "-q"), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    args = overrides(out, "videobert", steps=24, **{"train.save_every": 4})
    proc = subprocess.Popen(cli_cmd("pretrain", path, *args, "-q"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not (latest.exists() and latest.read_text() >= "step_00000008") and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists(), "the run must be killed before it ends"
    killed_at = losses(out)[-1]["step"]
    assert killed_at < 24

    rerun = subprocess.run(cli_cmd("pretrain", path, *args, "-q"), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed at step" in rerun.stdout
    assert losses(out) == losses(tmp_path / "ref")

    # Ctrl-C: the step in progress finishes, is checkpointed (whatever save_every says), exit 130
    out = tmp_path / "ctrl_c"
    args = overrides(out, "videobert", steps=24, **{"train.save_every": 4})
    proc = subprocess.Popen(cli_cmd("pretrain", path, *args, "-q"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5) and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped_at = losses(out)[-1]["step"]
    assert stopped_at < 24 and (out / "checkpoints" / "latest").read_text() == f"step_{stopped_at:08d}"
    assert "interrupted" in err and "Traceback" not in err
    rerun = subprocess.run(cli_cmd("pretrain", path, *args, "-q"), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert losses(out) == losses(tmp_path / "ref")


def test_torchrun_two_processes_match_one_process_over_the_whole_batch(tiny_config, tmp_path):
    """Two gloo ranks with micro-batch 2 vs one process with batch 4: the
    contrastive candidates and alignment negatives are gathered over the
    ranks and the mean losses divided by global counts, so the same losses up
    to float summation order (tolerance 1e-4). Then the same two ranks with
    grad_accum=2 against one process with grad_accum=2: each accumulation
    group is one batch for the negatives, whatever the number of ranks."""
    path, overrides = tiny_config
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for accum in (1, 2):
        single = tmp_path / f"single{accum}"
        extra = {"train.grad_accum": accum, "train.batch_size": 4 * accum}
        assert cli(["pretrain", path, *overrides(single, "cbt", steps=4, **extra), "-q"]) == 0
        ddp = tmp_path / f"ddp{accum}"
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                              "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                              "-m", "videolm.cli", "pretrain", path, *overrides(ddp, "cbt", steps=4, **extra), "-q"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        a, b = losses(single), losses(ddp)
        assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
        for ra, rb in zip(a, b):
            for key in ra:
                assert rb[key] == pytest.approx(ra[key], abs=1e-4), (accum, key, ra, rb)
        assert os.path.isdir(ddp / "model") and not os.path.exists(ddp / "model.tmp")


def test_changing_steps_on_resume_keeps_the_lr_schedule_unless_asked(tiny_config, tmp_path, caplog):
    """A run of 8 steps stopped at 4 and resumed with train.steps=12 keeps its
    8-step cosine (no LR jump); train.schedule_steps=12 on the next resume is
    an explicit change, announced with its jump. LRs checked by hand."""
    import logging
    import math

    path, overrides = tiny_config
    out = tmp_path / "run"
    peak, warmup = 2e-3, 2

    def by_hand(step: int, total: int) -> float:  # the lr of 1-based step `step`: warmup (s + 1) / w, then cosine
        s = step - 1
        if s < warmup:
            return peak * (s + 1) / warmup
        return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / (total - warmup))))

    def lrs() -> dict[int, float]:
        with open(out / "metrics.jsonl") as f:
            return {r["step"]: r["lr"] for r in map(json.loads, f)}

    stop = {"train.max_steps_per_run": 4, "train.save_every": 4}
    pretrain(load_config(path, overrides(out, "cbt", steps=8, **stop)))
    with caplog.at_level(logging.WARNING, logger="videolm.train.loop"):
        pretrain(load_config(path, overrides(out, "cbt", steps=12, **stop)))
    assert "the LR schedule keeps the 8 steps it was saved with" in caplog.text
    assert "train.schedule_steps=12" in caplog.text
    got = lrs()
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        assert got[step] == pytest.approx(by_hand(step, 8), rel=1e-6), step
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="videolm.train.loop"):
        pretrain(load_config(path, overrides(out, "cbt", steps=12, **{"train.schedule_steps": 12})))
    # at step 8: the 8-step cosine has ended (0.000); the 12-step one is at 0.5 (1 + cos(0.6 pi)) = 0.345
    assert "changes the LR schedule from 8 to 12 steps: at step 8 the lr multiplier goes from 0.000 to 0.345" \
        in caplog.text
    got = lrs()
    assert sorted(got) == list(range(1, 13))
    for step in range(9, 13):
        assert got[step] == pytest.approx(by_hand(step, 12), rel=1e-6), step


def test_resume_with_a_different_config_is_refused(tiny_config, tmp_path, capsys):
    path, overrides = tiny_config
    out = tmp_path / "run"
    assert cli(["pretrain", path, *overrides(out, "cbt", steps=2), "-q"]) == 0
    # only the run length changes: resumes and goes on
    assert cli(["pretrain", path, *overrides(out, "cbt", steps=3), "-q"]) == 0
    assert [r["step"] for r in losses(out)] == [1, 2, 3]
    capsys.readouterr()
    code = cli(["pretrain", path, *overrides(out, "cbt", steps=4, **{"model.hidden_size": 64,
                                                                     "train.lr": 0.1}), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "config differs from the checkpoint's in model.hidden_size, train.lr" in err
    assert err.count("\n") == 1


def test_resume_from_a_checkpoint_before_the_first_logged_row(tiny_config, tmp_path):
    """A kill after a metrics row but before the next checkpoint leaves rows
    that the resume drops; with none left, the resumed run starts a new log."""
    path, overrides = tiny_config
    out = tmp_path / "run"
    args = overrides(out, "cbt", steps=6, **{"train.log_every": 3, "train.save_every": 2})
    assert cli(["pretrain", path, *args, "train.max_steps_per_run=4", "-q"]) == 0
    assert [r["step"] for r in losses(out)] == [3]
    (out / "checkpoints" / "latest").write_text("step_00000002")  # as if killed between steps 3 and 4
    assert cli(["pretrain", path, *args, "-q"]) == 0
    assert [r["step"] for r in losses(out)] == [3, 6]


def test_a_refit_vocabulary_at_the_same_path_is_refused_on_resume(corpus, tiny_config, tmp_path, capsys):
    import shutil

    from videolm.tokenize.kmeans import KMeansConfig
    from videolm.tokenize.vocab import encode_store, fit_vocabulary

    path, overrides = tiny_config
    store, vocab = tmp_path / "store", tmp_path / "vocab"
    shutil.copytree(corpus["store"], store, ignore=shutil.ignore_patterns("tokens"))
    for k in (3, 2):  # fit, train 2 steps; refit at the same path, re-encode, resume
        shutil.rmtree(store / "tokens", ignore_errors=True)
        fit_vocabulary(str(store), KMeansConfig(k=k, depth=2, seed=0)).save_pretrained(str(vocab), overwrite=True)
        encode_store(str(store), str(vocab))
        capsys.readouterr()
        code = cli(["pretrain", path, *overrides(tmp_path / "run", "videobert", steps=2 * k,
                                                 **{"data.store": str(store), "data.vocab": str(vocab)}), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "the vocabulary at data.vocab is not the one this run started with" in err, err


def test_user_mistakes_are_one_line(tiny_config, tmp_path, capsys):
    path, overrides = tiny_config
    cases = [
        (overrides(tmp_path / "a", "videobert", **{"data.vocab": "null"}), "vocab"),
        (overrides(tmp_path / "b", "cbt", **{"train.batch_size": 3, "train.grad_accum": 2}), "multiple of"),
        (overrides(tmp_path / "c", "cbt", **{"model.feature_dim": 99}), "model.feature_dim=99"),
        (overrides(tmp_path / "d", "cbt", **{"train.lrr": 1}), "unknown key 'train.lrr'"),
        (overrides(tmp_path / "e", "cbt", **{"train.amp": "fp16"}), "fp16 needs CUDA"),
        (overrides(tmp_path / "f", "cbt", **{"data.store": str(tmp_path)}), str(tmp_path)),
    ]
    (tmp_path / "g" / "checkpoints").mkdir(parents=True)
    (tmp_path / "g" / "checkpoints" / "latest").write_text("step_00000004")
    (tmp_path / "g" / "checkpoints" / "step_00000004").mkdir()
    cases.append((overrides(tmp_path / "g", "cbt"), "not a checkpoint directory (missing state.json)"))
    for args, expected in cases:
        capsys.readouterr()
        assert cli(["pretrain", path, *args, "-q"]) == 2, expected
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err


def test_torchrun_prints_a_config_mistake_once(tiny_config, tmp_path):
    """Both ranks read the same bad key: one line from rank 0, not one per rank."""
    path, overrides = tiny_config
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                          "-m", "videolm.cli", "pretrain", path, *overrides(tmp_path / "d", "cbt", **{"train.lrr": 1}),
                          "-q"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert run.returncode != 0
    ours = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "unknown key 'train.lrr'" in ours[0] and "rank" not in ours[0], run.stderr[-2000:]


def test_rows_without_features_are_listed_and_skipped(corpus, tiny_config, tmp_path):
    path, overrides = tiny_config
    manifest = tmp_path / "captions.jsonl"
    rows = Path(corpus["captions"]).read_text() + '{"video_id": "not_extracted", "captions": ["a lost video"]}\n'
    manifest.write_text(rows)
    out = tmp_path / "run"
    cfg = load_config(path, overrides(out, "cbt", steps=1, **{"data.sources.0.manifest": str(manifest)}))
    pretrain(cfg)
    missing = [json.loads(line) for line in (out / "missing.jsonl").read_text().splitlines()]
    assert [(m["id"], m["line"]) for m in missing] == [("not_extracted", 6)]


def test_plot_command_draws_a_run_with_bf16_autocast(tiny_config, tmp_path, capsys):
    path, overrides = tiny_config
    out = tmp_path / "run"
    assert cli(["pretrain", path, *overrides(out, "cbt", steps=2, **{"train.amp": "bf16"}), "-q"]) == 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in losses(out))
    os.remove(out / "loss.png")
    assert cli(["plot", str(out)]) == 0
    assert os.path.getsize(out / "loss.png") > 1000
    assert cli(["plot", str(tmp_path / "nothing")]) == 2


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", ["videobert_tiny", "cbt_tiny"])
def test_shipped_tiny_configs_train_on_the_sample_media(name, sample_media_store, tmp_path, monkeypatch):
    """configs/*_tiny.yaml as `make demo` runs them (paths relative to the
    repository), on real features under the demo store's ids."""
    monkeypatch.chdir(REPO)
    out = tmp_path / name
    assert cli(["pretrain", f"configs/{name}.yaml", f"data.store={sample_media_store}/store",
                f"data.vocab={sample_media_store}/vocab", f"train.out={out}", "train.steps=3", "-q"]) == 0
    assert [r["step"] for r in losses(out)] == [3]
    assert os.path.exists(out / "model" / "model.safetensors")


def test_frozen_visual_table_keeps_its_centroid_rows(tiny_config, tmp_path, capsys):
    """model.freeze_visual_table: the word table after training is exactly its
    centroid initialisation (recomputed here from the vocabulary by PCA), while
    the rest of the model trains; without the centroid init it is refused."""
    import numpy as np

    from videolm.model.pretraining import VideoLMForPretraining
    from videolm.tokenize.vocab import Vocabulary

    path, overrides = tiny_config
    out = tmp_path / "frozen"
    args = overrides(out, "videobert", steps=6, **{"model.init_visual_from_centroids": "true",
                                                   "model.freeze_visual_table": "true", "train.lr": 1e-2})
    result = pretrain(load_config(path, args))
    model = VideoLMForPretraining.from_pretrained(result.model_dir)
    table = model.transformer.visual_embeddings.table.weight.detach().double().numpy()
    c = Vocabulary.from_pretrained(os.path.join(result.model_dir, "vocab")).word_centroids().astype(np.float64)
    n, hidden = c.shape[0], table.shape[1]
    c = c - c.mean(0)
    u, s, vt = np.linalg.svd(c, full_matrices=False)
    k = min(hidden, vt.shape[0])
    proj = c @ vt[:k].T  # principal coordinates, up to each column's sign
    # the embedding table was not trained: its rows span exactly the centroids' principal coordinates
    np.testing.assert_allclose(np.abs(table[:n, :k]) / np.abs(table[:n, :k]).max(),
                               np.abs(proj) / np.abs(proj).max(), atol=1e-5)
    assert np.all(table[:n, k:] == 0)
    trained = VideoLMForPretraining.from_pretrained(result.model_dir).transformer.word_embeddings.weight
    untouched = VideoLMForPretraining(model.config).transformer.word_embeddings.weight
    assert not torch.allclose(trained, untouched)
    code = cli(["pretrain", path, *overrides(tmp_path / "bad", "videobert", **{"model.freeze_visual_table": "true"})])
    assert code != 0 and "init_visual_from_centroids" in capsys.readouterr().err
