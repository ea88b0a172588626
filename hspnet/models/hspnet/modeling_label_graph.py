# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""HSPNet's label graph (remote code beside `modeling_hspnet.py`: imports only torch and its siblings).

1. `process_relation`: raw label/group similarity block -> the fixed GCN adjacency (in row blocks: nothing larger
   than the `(n, n)` result), and `induced_adjacency` for label sampling.
2. `HSPNetGraphConvolution`, `HSPNetGCN`: the 3-layer GCN with a residual mix, shared by the group and label levels.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_hspnet import HSPNetConfig


# ---------------------------------------------------------------------------------------------------------------------
# Relation processing
# ---------------------------------------------------------------------------------------------------------------------


def _keep_top_k(rows: torch.Tensor, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """`rows` `(b, n)` with, in each row, the `k` largest entries kept and the rest zeroed (into `out` if given): the
    released `torch.topk` + `scatter_`, exactly, in less time.

    The `k`-th largest value `t` of each row is found by an unsorted selection of the `n - k + 1` smallest entries
    (whose largest is `t`) instead of a sorted selection of the `k` largest. Every entry above `t` is among the top
    `k`; of the entries equal to `t`, `topk` keeps as many as are still needed. When that is all of them, or when `t`
    is 0 (a kept zero and a dropped one are the same zero), the result is `rows >= t` whatever `topk`'s choice. Only
    a row where a strict part of a tie of non-zero values is kept (or a row with NaN) depends on which tied entries
    `topk` picks: those rows go through `topk` itself.
    """
    n = rows.shape[1]
    out = torch.empty_like(rows) if out is None else out
    if k <= 0:
        return out.zero_()
    if k >= n:
        return out.copy_(rows)
    threshold = torch.topk(rows, n - k + 1, dim=1, largest=False, sorted=False).values.amax(dim=1, keepdim=True)
    at_least = rows >= threshold
    torch.where(at_least, rows, torch.zeros((), dtype=rows.dtype, device=rows.device), out=out)
    ambiguous = (at_least.sum(dim=1) > k) & (threshold.squeeze(1) != 0) | torch.isnan(rows).any(dim=1)
    if bool(ambiguous.any()):
        which = ambiguous.nonzero().squeeze(1)
        values, indices = torch.topk(rows[which], k, dim=1)
        out[which] = torch.zeros_like(values[:, :1]).expand(-1, n).clone().scatter_(1, indices, values)
    return out


def process_relation(
    relation: torch.Tensor, keep_ratio: float = 0.75, reweight_p: float = 0.2, block_rows: int = 1024
) -> torch.Tensor:
    """Turn an `n x n` block of raw similarities into the fixed adjacency used by the GCN.

    As released: (1) in each row keep the top `int(keep_ratio * n)` entries (`torch.topk`, so the diagonal, the
    largest similarity, is normally among them) and zero the rest; (2) zero the diagonal; (3) divide each row by its
    sum and multiply by `reweight_p`; (4) set the diagonal to `1 - reweight_p`. Step (1) gives `topk`'s result
    exactly, by selection rather than sorting (`_keep_top_k`), and every step writes into the result in place: at
    10,000 labels, where this runs on every model load, ~2x faster than the released steps.

    A row with nothing left off the diagonal (e.g. a single group, where `int(0.75 * 1) == 0`) would be 0/0 in the
    released code; here it keeps only itself (diagonal 1), which is what a graph with no neighbours means.

    Rows are independent, so they are processed `block_rows` at a time into the output: the memory beyond the
    `(n, n)` result is `O(block_rows * n)`, whatever `n` (10,000 labels: a 400 MB result, ~60 MB of work space).

    Args:
        relation (`torch.Tensor` of shape `(n, n)`): raw similarities.
    Returns:
        `torch.Tensor` of shape `(n, n)`, float32, rows summing to 1 (the self-only rows too).
    """
    n = relation.shape[0]
    k = int(keep_ratio * n)
    adjacency = torch.empty(n, n, dtype=torch.float32, device=relation.device)
    for start in range(0, n, block_rows):
        block = _keep_top_k(relation[start : start + block_rows].float(), k, out=adjacency[start : start + block_rows])
        count = block.shape[0]
        diagonal_index = torch.arange(start, start + count, device=relation.device)
        local = torch.arange(count, device=relation.device)
        block[local, diagonal_index] = 0.0
        row_sum = block.sum(dim=1, keepdim=True)
        isolated = row_sum == 0
        block.div_(torch.where(isolated, 1.0, row_sum)).mul_(reweight_p)
        if bool(isolated.any()):
            block[isolated.squeeze(1)] = 0.0
        # float32 whatever the default dtype (models built with `dtype=torch.float16` set it while they are built)
        block[local, diagonal_index] = torch.where(isolated.squeeze(1), 1.0, 1.0 - reweight_p).to(block.dtype)
    return adjacency


def induced_adjacency(adjacency: torch.Tensor, indices: torch.Tensor, reweight_p: float) -> torch.Tensor:
    """The adjacency among the labels `indices` `(C',)` only, for label sampling: each row keeps its diagonal
    `1 - p` and its weights to the sampled neighbours, rescaled to the total `p` they have in the full graph; a row
    with no sampled neighbour keeps only itself (weight 1), as `process_relation` does for isolated rows."""
    sub = adjacency[indices][:, indices]
    eye = torch.eye(sub.shape[0], dtype=torch.bool, device=sub.device)
    off = sub.masked_fill(eye, 0.0)
    row_sum = off.sum(dim=1, keepdim=True)
    isolated = row_sum == 0
    off = torch.where(isolated, torch.zeros_like(off), off / torch.where(isolated, 1.0, row_sum) * reweight_p)
    return off + torch.diag(torch.where(isolated.squeeze(1), 1.0, 1.0 - reweight_p))


# ---------------------------------------------------------------------------------------------------------------------
# GCN
# ---------------------------------------------------------------------------------------------------------------------


class HSPNetGraphConvolution(nn.Module):
    """`x -> adjacency @ (x @ weight)`, no bias. `weight` has shape `(in_features, out_features)`."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))

    def forward(self, features: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """`features` `(n, in_features)`, `adjacency` `(n, n)` -> `(n, out_features)`."""
        return adjacency.to(features.dtype) @ (features @ self.weight.to(features.dtype))

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}"


class HSPNetGCN(nn.Module):
    """Three graph convolutions `D -> H1 -> H2 -> D` with LeakyReLU after the first two, and a trainable residual mix
    `out = gamma * gcn(x) + (1 - gamma) * x`. The same module serves the group level and the label level."""

    def __init__(self, config: HSPNetConfig):
        super().__init__()
        dim = config.projection_dim
        hidden1, hidden2 = config.gcn_hidden_dims
        self.gc1 = HSPNetGraphConvolution(dim, hidden1)
        self.gc2 = HSPNetGraphConvolution(hidden1, hidden2)
        self.gc3 = HSPNetGraphConvolution(hidden2, dim)
        self.act = nn.LeakyReLU(config.gcn_negative_slope)
        self.gamma = nn.Parameter(torch.full((1,), float(config.gcn_gamma_init)))

    def forward(self, features: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """`features` `(n, D)`, `adjacency` `(n, n)` -> `(n, D)`."""
        hidden = self.act(self.gc1(features, adjacency))
        hidden = self.act(self.gc2(hidden, adjacency))
        hidden = self.gc3(hidden, adjacency)
        gamma = self.gamma.to(hidden.dtype)
        return gamma * hidden + (1 - gamma) * features


def sample_labels(labels: torch.Tensor, size: int, generator: torch.Generator) -> tuple[torch.Tensor | None,
                                                                                       torch.Tensor | None]:
    """Label sampling for one training step: `(label_indices, label_weights)` for the `(B, C)` observed targets.

    The labels observed positive in the batch (the only ones whose loss terms carry an observed positive; SPLC, AN &
    co. need nothing else) are always included with weight 1; `size` of the others are drawn uniformly with the CPU
    `generator`, each with weight `others / size`, so the weighted loss is an unbiased estimate of the full one
    (with the label GCN run on the graph they induce, `induced_adjacency`). `(None, None)` when the sample would hold
    every label (then the step is exact)."""
    observed = (labels.detach() > 0).any(dim=0)  # (C,); -1 (a verified negative) is not a positive
    always = observed.nonzero().squeeze(1)
    others = (~observed).nonzero().squeeze(1)
    if size >= others.numel():
        return None, None
    order = torch.randperm(others.numel(), generator=generator)[:size]
    picked = others[order.to(others.device)]
    weights = torch.cat([torch.ones(always.numel()), torch.full((size,), others.numel() / size)])
    return torch.cat([always, picked]), weights.to(labels.device)
