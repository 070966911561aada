"""Contrastive candidates from every rank: two gloo ranks compute the step one
process computes over the whole batch (losses, gradients, weights after it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ddp_equivalence as eq  # noqa: E402


def test_two_gloo_ranks_match_one_process_over_the_whole_batch(tmp_path, one_torch_thread):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                          os.path.join(HERE, "ddp_equivalence.py"), str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    for variant, (mode, _) in eq.VARIANTS.items():
        model = eq.build(variant)
        ref = eq.one_step(model, model, eq.global_batch(mode), None)
        got = ddp[variant]
        assert set(got["losses"]) == set(ref["losses"]) == {"mlm", "visual", "align", "contrastive"}
        for key, value in ref["losses"].items():
            assert got["losses"][key].item() == pytest.approx(value.item(), abs=1e-5), (variant, key)
        assert got["loss"].item() == pytest.approx(ref["loss"].item(), abs=1e-5)
        assert set(got["grads"]) == set(ref["grads"])
        for name, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, atol=1e-6, rtol=1e-4, msg=f"{variant} grad {name}")
        for name, w in ref["weights"].items():
            if variant == "cbt_listwise" and name == "align_head.classifier.bias":
                # a softmax over each list is shift-invariant: this bias's gradient is zero up to rounding (checked
                # equal above) and Adam's step, m / sqrt(v), turns rounding into a full step of either sign
                continue
            torch.testing.assert_close(got["weights"][name], w, atol=1e-5, rtol=1e-5, msg=f"{variant} weight {name}")


def test_one_process_is_not_the_two_halves_apart(one_torch_thread):
    """The comparison above means something: each half alone (negatives from
    the micro-batch only, as before the gather) gives another InfoNCE loss."""
    model = eq.build("cbt").eval()
    batch = eq.global_batch("cbt")
    g = torch.Generator
    whole = model(batch, generator=g().manual_seed(7)).losses["contrastive"].item()
    halves = [model(eq.part(batch, r, 2), generator=g().manual_seed(7)).losses["contrastive"].item() for r in (0, 1)]
    assert abs(whole - sum(halves) / 2) > 0.05
