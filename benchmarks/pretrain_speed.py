"""Masked-LM training speed: our JointTransformer + masked-LM head against
Hugging Face ``transformers.BertForMaskedLM`` of the same sizes.

Text-only batches (the text side is where the two can be compared): the same
ids, the same 15 % BERT masking (80/10/10) and labels, fed to both. A step is
forward + backward + AdamW step. Both sides run in one process, interleaved
step by step (the order alternates), with dropout 0.1 on both and the
reference on its default attention implementation (printed). Reported:
tokens/s (batch x length / step time, median and best of the measured steps
after warm-up) and their ratios, including the median over steps of (the
reference's step time / ours next to it), which shrugs off load from other
processes that comes and goes; goal: ours >= 1.2x. Both sides use the same
AdamW, fused by default (--optimizer foreach: torch's default, several times
slower on the CPU, a cost both sides pay alike).

Peak memory: each side runs alone in a fresh subprocess (same batch, a few
steps) and reports its peak resident set size (VmHWM, the kernel's
high-water mark) and the growth over the RSS measured just before the first
step (model and optimizer built, nothing run): torch's CPU allocator keeps
no statistics, and tracemalloc does not see tensor memory.

Alignment (``--part alignment``): a full pre-training step of
``VideoLMForPretraining`` in CBT mode with every objective on, two ways side
by side in the same process, interleaved the same way: the default, where
alignment has a clean joint pass of its own (positives, random and hard
negatives: 4 B rows), and ``align_on_masked_pass``, where alignment is
scored on the masked joint pass (BERT's next-sentence style: no extra pass).
Reported: tokens/s of each (real tokens of the batch per step time) and the
ratio, masked pass over separate pass.

    python benchmarks/pretrain_speed.py [--part mlm alignment] [--settings base small] [--steps 6] [--warmup 2]
                                        [--threads 1] [--optimizer fused|foreach] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videolm.data.batch import IGNORE  # noqa: E402
from videolm.model.config import ModelConfig  # noqa: E402
from videolm.model.heads import MaskedTokenHead  # noqa: E402
from videolm.model.losses import masked_token_loss  # noqa: E402
from videolm.model.pretraining import VideoLMForPretraining  # noqa: E402
from videolm.model.transformer import JointTransformer, init_bert_weights  # noqa: E402

# name -> (hidden, layers, heads, intermediate, batch, seq)
SETTINGS = {
    "base": (768, 12, 12, 3072, 4, 128),   # BERT-base dims
    "small": (256, 4, 4, 1024, 16, 128),
}
VOCAB, CLS, SEP, MASK = 30522, 101, 102, 103


class OursMLM(nn.Module):
    """What pre-training runs for the text side: the joint transformer on
    text-only input and the masked-LM head at the masked positions only."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.transformer = JointTransformer(config)
        self.mlm_head = MaskedTokenHead(config, config.text_vocab_size)
        self.mlm_head.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def forward(self, ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        where = labels != IGNORE  # (B, T)
        hidden = self.transformer(ids, attention, text_select=where).text_selected  # (M, H)
        logits = self.mlm_head(hidden, self.transformer.word_embeddings.weight)  # (M, V)
        return masked_token_loss(logits, labels[where])


def build(side: str, setting: str) -> nn.Module:
    hidden, layers, heads, inter = SETTINGS[setting][:4]
    if side == "ours":
        # mode cbt with a 1-dim dummy feature: the visual side is never used on text-only batches
        cfg = ModelConfig(mode="cbt", feature_dim=1, hidden_size=hidden, num_layers=layers, num_heads=heads,
                          intermediate_size=inter, dropout=0.1, attention_dropout=0.1)
        return OursMLM(cfg)
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return BertForMaskedLM(cfg)


def make_batch(setting: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Full-length sequences [CLS] w.. [SEP]; BERT masking of 15 % of the words."""
    B, T = SETTINGS[setting][4:]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    chosen = torch.rand((B, T), generator=g) < 0.15
    chosen[:, 0] = chosen[:, -1] = False
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    action = torch.rand((B, T), generator=g)
    masked = ids.clone()
    masked[chosen & (action < 0.8)] = MASK
    rand = chosen & (action >= 0.8) & (action < 0.9)
    masked[rand] = torch.randint(1000, VOCAB, (int(rand.sum()),), generator=g)
    return {"ids": masked, "attention": torch.ones((B, T), dtype=torch.long), "labels": labels}


def step(side: str, model: nn.Module, opt: torch.optim.Optimizer, batch: dict) -> float:
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    if side == "ours":
        loss = model(batch["ids"], batch["attention"].bool(), batch["labels"])
    else:
        loss = model(input_ids=batch["ids"], attention_mask=batch["attention"], labels=batch["labels"]).loss
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    """The same AdamW for both sides: fused (one kernel over all parameters;
    CPU support since torch 2.4) or torch's default multi-tensor (foreach)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=kind == "fused", foreach=kind == "foreach")


def speed(setting: str, steps: int, warmup: int, opt_kind: str) -> dict:
    torch.manual_seed(0)
    models = {side: build(side, setting).train() for side in ("ours", "hf")}
    opts = {side: optimizer(m, opt_kind) for side, m in models.items()}
    batch = make_batch(setting)
    times = {"ours": [], "hf": []}
    for i in range(warmup + steps):
        order = ("ours", "hf") if i % 2 == 0 else ("hf", "ours")
        for side in order:
            dt = step(side, models[side], opts[side], batch)
            if i >= warmup:
                times[side].append(dt)
    tokens = batch["ids"].numel()
    result = {"attn": models["hf"].config._attn_implementation, "tokens_per_step": tokens,
              "masked": int((batch["labels"] != IGNORE).sum())}
    for side, ts in times.items():
        result[side] = {"median": tokens / statistics.median(ts), "best": tokens / min(ts),
                        "params": sum(p.numel() for p in models[side].parameters())}
    # each measured step of ours against the reference's step next to it: robust to load that drifts
    result["paired"] = statistics.median(h / o for h, o in zip(times["hf"], times["ours"]))
    return result


def status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc, in MB. Not
    ru_maxrss: Linux carries that across fork + exec, so a child would report
    its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(side: str, setting: str, steps: int, opt_kind: str) -> None:
    torch.manual_seed(0)
    model = build(side, setting).train()
    opt = optimizer(model, opt_kind)
    batch = make_batch(setting)
    before = status_mb("VmRSS")
    for _ in range(steps):
        step(side, model, opt, batch)
    print(json.dumps({"peak_mb": status_mb("VmHWM"), "before_mb": before}))


def memory(side: str, setting: str, opt_kind: str, steps: int = 3) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", side, "--settings", setting,
                          "--steps", str(steps), "--optimizer", opt_kind, "--threads", str(torch.get_num_threads())], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# alignment part: name -> (hidden, layers, heads, intermediate, batch, text tokens, clips, feature dim)
ALIGN_SETTINGS = {
    "base": (768, 12, 12, 3072, 8, 48, 32, 1024),
    "small": (256, 4, 4, 1024, 16, 48, 32, 1024),
}


def pretrain_batch(setting: str, seed: int = 0):
    """A CBT batch: full-length captions and clip sides, 15 % masked on both,
    two rows per video (as two captions of one video)."""
    from videolm.data.batch import Batch

    B, T, V, D = ALIGN_SETTINGS[setting][4:]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    chosen = torch.rand((B, T), generator=g) < 0.15
    chosen[:, 0] = chosen[:, -1] = False
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    masked_ids = torch.where(chosen, torch.full_like(ids, MASK), ids)
    return Batch(text_ids=masked_ids, text_attention=torch.ones((B, T), dtype=torch.bool), text_labels=labels,
                 visual_attention=torch.ones((B, V), dtype=torch.bool),
                 visual_masked=torch.rand((B, V), generator=g) < 0.15,
                 group_ids=torch.arange(B) // 2, visual_feats=torch.randn((B, V, D), generator=g))


def alignment_speed(setting: str, steps: int, warmup: int, opt_kind: str) -> dict:
    hidden, layers, heads, inter, B, T, V, D = ALIGN_SETTINGS[setting]
    models, opts = {}, {}
    for side in ("separate", "masked"):
        torch.manual_seed(0)
        cfg = ModelConfig(mode="cbt", feature_dim=D, hidden_size=hidden, num_layers=layers, num_heads=heads,
                          intermediate_size=inter, embed_dim=256, align_on_masked_pass=side == "masked")
        models[side] = VideoLMForPretraining(cfg).train()
        opts[side] = optimizer(models[side], opt_kind)
    batch = pretrain_batch(setting)
    times = {"separate": [], "masked": []}
    for i in range(warmup + steps):
        for side in (("separate", "masked") if i % 2 == 0 else ("masked", "separate")):
            model, opt = models[side], opts[side]
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            model(batch, generator=torch.Generator().manual_seed(i)).loss.backward()
            opt.step()
            model.clamp_parameters()
            if i >= warmup:
                times[side].append(time.perf_counter() - t)
    tokens = B * (T + V + 1)
    result = {"tokens_per_step": tokens}
    for side, ts in times.items():
        result[side] = {"median": tokens / statistics.median(ts), "best": tokens / min(ts)}
    result["paired"] = statistics.median(s / m for s, m in zip(times["separate"], times["masked"]))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--steps", type=int, default=6, help="measured steps per side")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--optimizer", choices=["fused", "foreach"], default="fused",
                    help="AdamW implementation, the same on both sides")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, spinning OpenMP threads measure the "
                         "scheduler, not the model)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--part", nargs="*", default=["mlm", "alignment"], choices=["mlm", "alignment"],
                    help="mlm: ours vs HF BertForMaskedLM; alignment: separate alignment pass vs align_on_masked_pass")
    ap.add_argument("--memory-child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.settings[0], args.steps, args.optimizer)
        return
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"forward + backward + AdamW ({args.optimizer}), dropout 0.1 both sides, random weights")
    for setting in args.settings if "mlm" in args.part else []:
        hidden, layers, heads, inter, B, T = SETTINGS[setting]
        r = speed(setting, args.steps, args.warmup, args.optimizer)
        print(f"\n[{setting}] hidden {hidden}, {layers} layers, {heads} heads, ffn {inter}; batch {B} x {T} tokens "
              f"({r['masked']} masked); HF attention: {r['attn']}")
        for side, name in (("ours", "videolm JointTransformer+MLM"), ("hf", "HF BertForMaskedLM")):
            print(f"  {name:30s} {r[side]['median']:8.0f} tok/s median  {r[side]['best']:8.0f} best  "
                  f"({r[side]['params'] / 1e6:.1f} M params)")
        print(f"  ratio ours/HF: {r['ours']['median'] / r['hf']['median']:.2f}x of medians, "
              f"{r['ours']['best'] / r['hf']['best']:.2f}x of bests, {r['paired']:.2f}x median of paired steps "
              f"(goal >= 1.2x)")
        if not args.no_memory:
            mem = {side: memory(side, setting, args.optimizer) for side in ("ours", "hf")}
            for side, name in (("ours", "videolm"), ("hf", "HF")):
                m = mem[side]
                print(f"  peak RSS {name:8s} {m['peak_mb']:7.0f} MB  (+{m['peak_mb'] - m['before_mb']:.0f} MB over "
                      f"model+optimizer built, {m['before_mb']:.0f} MB)")
            print(f"  peak growth ratio HF/ours: "
                  f"{(mem['hf']['peak_mb'] - mem['hf']['before_mb']) / (mem['ours']['peak_mb'] - mem['ours']['before_mb']):.2f}x")
    for setting in args.settings if "alignment" in args.part else []:
        hidden, layers, heads, inter, B, T, V, D = ALIGN_SETTINGS[setting]
        r = alignment_speed(setting, args.steps, args.warmup, args.optimizer)
        print(f"\n[alignment, {setting}] CBT, every objective on; hidden {hidden}, {layers} layers; batch {B} x "
              f"({T} text + {V} clips of {D}-dim features)")
        for side, name in (("separate", "alignment pass of its own"), ("masked", "align_on_masked_pass")):
            print(f"  {name:30s} {r[side]['median']:8.0f} tok/s median  {r[side]['best']:8.0f} best")
        print(f"  ratio masked-pass/separate: {r['masked']['median'] / r['separate']['median']:.2f}x of medians, "
              f"{r['masked']['best'] / r['separate']['best']:.2f}x of bests, {r['paired']:.2f}x median of paired "
              f"steps")


if __name__ == "__main__":
    main()
