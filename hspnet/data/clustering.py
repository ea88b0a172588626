"""An automatic label hierarchy: CLIP text embeddings of the label names, clustered into groups.

:func:`auto_hierarchy` embeds each label as ``"a photo of a {label}."`` with the CLIP text tower
(:func:`label_text_embeddings`) and groups the embeddings (:func:`cluster_label_embeddings`) by seeded spherical
k-means or average-linkage agglomerative clustering; each group is named after its most central label. K-means needs
memory linear in the number of labels ``C``; the agglomerative clustering holds one ``(C, C)`` linkage matrix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from hspnet.data.hierarchy import Hierarchy

DEFAULT_PROMPT_TEMPLATE = "a photo of a {}."
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch16"


def default_num_groups(num_labels: int) -> int:
    """``round(sqrt(C))``, within ``1..C``: 4 groups for 20 labels, 9 for 80, 18 for 312 (the benchmarks use
    4, 12, 6 and 20)."""
    return max(1, min(num_labels, int(round(math.sqrt(num_labels)))))


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 10, max_iter: int = 100) -> np.ndarray:
    """Spherical k-means (cosine similarity) with k-means++ seeding; the best of ``n_init`` runs.

    Memory and time are linear in the number of labels ``n`` per iteration (one ``(n, k)`` similarity; no
    ``(n, n)`` matrix): the k-means++ seeding keeps each point's best similarity to the centres chosen so far
    instead of recomputing it against all of them, and the centres are the means of the clusters' rows taken in
    label order (the same values as a mean over a boolean mask)."""
    n = len(x)
    rng = np.random.default_rng(seed)
    best_assign, best_cost = None, math.inf
    for _ in range(n_init):
        first = int(rng.integers(n))
        centres = [x[first]]
        best_similarity = x @ x[first]
        for _ in range(1, k):
            distance = np.clip(1.0 - best_similarity, 0.0, None)
            total = float((distance**2).sum())
            index = int(rng.choice(n, p=distance**2 / total)) if total > 0 else int(rng.integers(n))
            centres.append(x[index])
            np.maximum(best_similarity, x @ x[index], out=best_similarity)
        centre = np.stack(centres)
        assign = np.full(n, -1)
        for _ in range(max_iter):
            new_assign = np.argmax(x @ centre.T, axis=1)
            if (np.bincount(new_assign, minlength=k) == 0).any():
                for cluster in range(k):  # an empty cluster takes the point furthest from its own centre
                    if not np.any(new_assign == cluster):
                        similarity = np.einsum("ij,ij->i", x, centre[new_assign])
                        counts = np.bincount(new_assign, minlength=k)
                        order = np.argsort(similarity, kind="stable")
                        candidates = order[counts[new_assign[order]] > 1]
                        if candidates.size:
                            new_assign[candidates[0]] = cluster
            if np.array_equal(new_assign, assign):
                break
            assign = new_assign
            centre = _normalise(_cluster_means(x, assign, centre))
        cost = float((1.0 - np.einsum("ij,ij->i", x, centre[assign])).sum())
        if cost < best_cost - 1e-12:
            best_assign, best_cost = assign.copy(), cost
    return best_assign


def _cluster_means(x: np.ndarray, assign: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The mean row of each cluster (rows in label order), or its ``previous`` centre when it is empty."""
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(len(previous) + 1))
    out = previous.copy()
    for cluster in range(len(previous)):
        if bounds[cluster + 1] > bounds[cluster]:
            out[cluster] = x[order[bounds[cluster] : bounds[cluster + 1]]].mean(axis=0)
    return out


def _agglomerative(x: np.ndarray, k: int) -> np.ndarray:
    """Average-linkage agglomerative clustering on cosine distance (deterministic: of the closest pairs, the one
    with the lowest first index, then the lowest second index, merges first).

    One ``(n, n)`` float64 linkage matrix (800 MB at n = 10,000) and, per merge, O(n) work plus a rescan of the
    rows whose nearest cluster took part in the merge: each row's nearest cluster is kept (value and lowest index),
    so a merge never scans the whole matrix. Merged clusters' rows and columns are set to infinity."""
    n = len(x)
    linkage = x @ x.T
    np.subtract(1.0, linkage, out=linkage)
    np.fill_diagonal(linkage, np.inf)
    sizes = np.ones(n, dtype=np.int64)
    members = [[i] for i in range(n)]
    nearest = np.argmin(linkage, axis=1) if n > 1 else np.zeros(n, dtype=np.int64)
    nearest_value = linkage[np.arange(n), nearest]
    alive = n
    while alive > k:
        a = int(np.argmin(nearest_value))  # the lowest row holding the smallest linkage ...
        b = int(nearest[a])  # ... and its lowest column: the first minimum of the matrix in row-major order
        a, b = min(a, b), max(a, b)
        merged = (sizes[a] * linkage[a] + sizes[b] * linkage[b]) / (sizes[a] + sizes[b])
        linkage[a, :] = merged
        linkage[:, a] = merged
        linkage[a, a] = np.inf
        linkage[b, :] = np.inf
        linkage[:, b] = np.inf
        sizes[a] += sizes[b]
        members[a].extend(members[b])
        members[b] = []
        nearest_value[b] = np.inf
        alive -= 1
        # rows whose nearest cluster was a or b: rescan; the others may only get closer to the new cluster a
        stale = np.flatnonzero((nearest == a) | (nearest == b))
        stale = stale[(stale != b) & np.isfinite(nearest_value[stale])]
        stale = np.union1d(stale, [a])
        others = np.ones(n, dtype=bool)
        others[stale] = False
        others[b] = False
        others &= np.isfinite(nearest_value)
        column = linkage[:, a]
        closer = others & ((column < nearest_value) | ((column == nearest_value) & (a < nearest)))
        nearest[closer] = a
        nearest_value[closer] = column[closer]
        if stale.size:
            nearest[stale] = np.argmin(linkage[stale], axis=1)
            nearest_value[stale] = linkage[stale, nearest[stale]]
    assign = np.empty(n, dtype=int)
    for cluster, index in enumerate(i for i in range(n) if members[i]):
        assign[members[index]] = cluster
    return assign


def cluster_label_embeddings(
    label_names: Sequence[str],
    embeddings,
    num_groups: int | None = None,
    method: str = "kmeans",
    seed: int = 0,
) -> Hierarchy:
    """Group labels by their (text) embeddings; each group is named after its most central label.

    Embeddings are L2-normalised; ``method`` is ``"kmeans"`` (spherical k-means, k-means++ seeding with
    ``seed``, best of 10 runs) or ``"agglomerative"`` (average linkage on cosine distance). Groups are numbered
    by their lowest label index; a group's name is the label closest (cosine) to the group's mean direction.
    """
    names = list(label_names)
    x = _normalise(np.asarray(embeddings, dtype=np.float64))
    if x.ndim != 2 or len(x) != len(names):
        raise ValueError(f"Expected one embedding row per label ({len(names)}), got an array of shape {x.shape}.")
    if not names:
        raise ValueError("No label to group.")
    k = default_num_groups(len(names)) if num_groups is None else int(num_groups)
    if not 1 <= k <= len(names):
        raise ValueError(f"num_groups must be in 1..{len(names)} (the number of labels), got {num_groups}.")
    if method == "kmeans":
        assign = _kmeans(x, k, seed)
    elif method == "agglomerative":
        assign = _agglomerative(x, k)
    else:
        raise ValueError(f"Unknown clustering method {method!r}; use 'kmeans' or 'agglomerative'.")
    order = sorted(set(assign.tolist()), key=lambda cluster: int(np.flatnonzero(assign == cluster)[0]))
    renumber = {cluster: index for index, cluster in enumerate(order)}
    label_to_group = [renumber[int(cluster)] for cluster in assign]
    groups = []
    for cluster in order:
        indices = np.flatnonzero(assign == cluster)
        centre = _normalise(x[indices].mean(axis=0, keepdims=True))[0]
        groups.append(names[int(indices[int(np.argmax(x[indices] @ centre))])])
    return Hierarchy(labels=names, groups=groups, label_to_group=label_to_group)


def label_text_embeddings(
    label_names: Sequence[str],
    clip_model: Any = DEFAULT_CLIP_MODEL,
    tokenizer: Any = None,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    batch_size: int = 256,
) -> np.ndarray:
    """CLIP text embeddings (not normalised) of ``template.format(name)`` for each label (underscores -> spaces)."""
    import torch
    from transformers import AutoTokenizer, CLIPModel

    from hspnet.models.hspnet.modeling_prompts import clip_text_embeddings

    if "{}" not in template:
        raise ValueError(f"The prompt template {template!r} has no '{{}}' for the label name.")
    if isinstance(clip_model, (str, os.PathLike)):
        source = os.fspath(clip_model)
        try:
            model = CLIPModel.from_pretrained(source)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as error:
            raise OSError(
                f"Could not load the CLIP model {source!r} to build the label hierarchy automatically ({error}). "
                "Pass a local CLIP folder (clip_model=...) or a hierarchy file."
            ) from error
    else:
        model = clip_model
        if tokenizer is None:
            raise ValueError("Pass the CLIP tokenizer together with a CLIPModel instance.")
    texts = [template.format(name.replace("_", " ")) for name in label_names]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        embeddings = clip_text_embeddings(model, tokenizer, texts, batch_size=batch_size)
    model.train(was_training)
    return embeddings.detach().cpu().numpy()


def auto_hierarchy(
    label_names: Sequence[str],
    clip_model: Any = DEFAULT_CLIP_MODEL,
    tokenizer: Any = None,
    *,
    num_groups: int | None = None,
    method: str = "kmeans",
    seed: int = 0,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    embeddings=None,
) -> Hierarchy:
    """Build a hierarchy from the CLIP text embeddings of the label names.

    Each label is embedded as ``template.format(label)`` ("a photo of a {}." by default) with the CLIP text
    tower (``clip_model``: a Hub id, a local folder, or a ``CLIPModel`` with its ``tokenizer``), the
    embeddings are clustered into ``num_groups`` groups (default ``round(sqrt(C))``) by seeded spherical
    k-means or by average-linkage agglomerative clustering (``method``), and each group is named after its
    most central label. Precomputed ``embeddings`` (one row per label) skip CLIP.
    """
    names = list(label_names)
    if embeddings is None:
        embeddings = label_text_embeddings(names, clip_model, tokenizer, template)
    return cluster_label_embeddings(names, embeddings, num_groups=num_groups, method=method, seed=seed)
