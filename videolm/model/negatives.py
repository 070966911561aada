"""Which (text, video) pairs the alignment head sees: the negatives policy.

For a batch of B clean pairs (text i belongs with video i):

* positives: (i, i) for every row, label 1;
* random negatives: for each text, ``num_random`` videos drawn uniformly
  without replacement from the rows of *other* groups, label 0;
* hard negatives (with a similarity matrix): for each text one other-group
  video and for each video one other-group text, label 0: the most similar
  (``hard="hardest"``) or one drawn with probability softmax(similarity) over
  the row's candidates (``hard="softmax"``, ALBEF's ITM negatives, the
  similarity then being the dual encoder's logits cos/τ). Where several
  videos fit a caption (a caption that names some attributes only, clips of
  one recipe step) the most similar other video is often a false negative;
  drawing makes it one candidate among the likely ones.

A row never gets a negative from its own group (``group_ids``: one id per
source video or image, so two captions of one video are never a negative
pair), and a row whose group fills the whole batch gets no negative at all.
Rows marked not ``valid`` (no visual side) take no part: no positive, no
negative, never anyone's negative. Random draws use the given
``torch.Generator`` so runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videolm.model.config import ALIGN_HARD_SAMPLING as HARD


@dataclass
class AlignmentPairs:
    text_index: torch.Tensor   # (N,) long, row of the text
    video_index: torch.Tensor  # (N,) long, row of the visual side
    labels: torch.Tensor       # (N,) float, 1 positive, 0 negative


def alignment_pairs(group_ids: torch.Tensor, num_random: int, generator: torch.Generator | None = None,
                    similarity: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                    hard: str = "hardest") -> AlignmentPairs:
    """group_ids: (B,); similarity: (B, B) text-by-video scores (detached), or
    None for no hard negatives; valid: (B,) bool, None = every row; hard: how
    the hard negative is picked (see the module)."""
    if hard not in HARD:
        raise ValueError(f"hard must be one of {', '.join(HARD)}, not {hard!r}")
    device = group_ids.device
    B = len(group_ids)
    rows = torch.arange(B, device=device)
    other = group_ids[:, None] != group_ids[None, :]  # (B, B) True where j may be a negative of i
    if valid is not None:
        other &= valid[:, None] & valid[None, :]
    positives = rows if valid is None else rows[valid]
    texts, videos = [positives], [positives]
    if num_random > 0 and B > 1:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        draws = torch.rand((B, B), generator=generator, device=gen_device).to(device)  # (B, B) in [0, 1)
        draws = draws.masked_fill(~other, -1.0)
        score, pick = draws.topk(min(num_random, B), dim=1)  # (B, k) a uniform subset of each row's candidates
        drawn = score >= 0
        texts.append(rows[:, None].expand_as(pick)[drawn])
        videos.append(pick[drawn])
    if similarity is not None:
        sim = similarity.detach().masked_fill(~other, float("-inf"))  # (B, B)
        has = other.any(1)  # rows (and, by symmetry, columns) with a candidate
        if hard == "softmax":  # Gumbel-max: argmax(s + G) is a draw from softmax(s) over the candidates
            gen_device = generator.device if generator is not None else torch.device("cpu")
            u = torch.rand((2, B, B), generator=generator, device=gen_device).to(device).clamp_(1e-12, 1 - 1e-7)
            gumbel = -torch.log(-torch.log(u))  # (2, B, B)
            hardest_video = (sim + gumbel[0]).argmax(1)  # for each text
            hardest_text = (sim + gumbel[1]).argmax(0)  # for each video
        else:
            hardest_video = sim.argmax(1)  # for each text
            hardest_text = sim.argmax(0)  # for each video
        texts += [rows[has], hardest_text[has]]
        videos += [hardest_video[has], rows[has]]
    text_index, video_index = torch.cat(texts), torch.cat(videos)
    labels = (text_index == video_index).float()  # only positives pair a row with itself
    return AlignmentPairs(text_index, video_index, labels)


@dataclass
class AlignmentLists:
    """Listwise alignment (``align_loss: listwise``): for each listed row, its
    positive and its ``n`` most similar other-group candidates (-1 where a row
    has fewer), over which a softmax picks the positive."""
    rows: torch.Tensor          # (R,) long, the rows whose lists these are (text row = video row of its pair)
    text_lists: torch.Tensor    # (R, n) long, for the text of each row: other-group videos, most similar first
    video_lists: torch.Tensor   # (R, n) long, for the video of each row: other-group texts, most similar first


def alignment_lists(group_ids: torch.Tensor, similarity: torch.Tensor, n: int, rows: torch.Tensor,
                    valid: torch.Tensor | None = None) -> AlignmentLists:
    """The localized lists of the re-ranker's training (Gao et al. 2021, LCE):
    the positive against the dual encoder's hardest other-group candidates, as
    the re-ranker meets them at test time in the dual encoder's top k.
    group_ids: (B,) of the global batch; similarity: (B, B) text-by-video
    scores (detached); rows: (R,) the rows to list (this rank's share); valid:
    (B,) bool, None = every row. Rows not valid are dropped from ``rows`` and
    are never a candidate."""
    other = group_ids[:, None] != group_ids[None, :]  # (B, B)
    if valid is not None:
        other &= valid[:, None] & valid[None, :]
        rows = rows[valid[rows]]
    k = min(n, len(group_ids))
    sim = similarity.detach().float().masked_fill(~other, float("-inf"))  # (B, B)

    def lists(scores: torch.Tensor) -> torch.Tensor:  # (R, B) -> (R, n) best other-group columns, -1 padded
        top, pick = scores.topk(k, dim=1)
        pick = pick.masked_fill(top == float("-inf"), -1)
        if k < n:
            pick = torch.cat([pick, pick.new_full((len(pick), n - k), -1)], 1)
        return pick

    return AlignmentLists(rows, lists(sim[rows]), lists(sim.T[rows]))
