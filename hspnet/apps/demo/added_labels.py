"""Labels added on the demo page (its "Add labels" text box; docs/open-vocabulary.md): scored without retraining and
shown apart from the trained ones.

The trained labels keep the scores of the model as it is. The added labels are scored as the model would score them
after ``add_labels`` (the trained labels, then the added ones; each added label in the group typed after it,
``label: group``, else the nearest group by CLIP text similarity): ``embed_labels(..., extend=True)`` computes those
label embeddings once per set of added labels (the model itself is not changed, so every visitor of the page sees the
same trained model), and the images' embeddings are scored against them. A trained label's own score would move a
little in that extended model (the label graph now has more labels), which is why the page shows the trained labels
from the unchanged model and the added ones in their own section.
"""

from __future__ import annotations

import html
from collections import OrderedDict
from typing import Any, Sequence

from hspnet.apps.label_sets import describe_label_change, parse_label_lines, resolve_groups
from hspnet.models.loading import hspnet_base_model

__all__ = ["AddedLabels", "render_added_labels"]


class AddedLabels:
    """The label embeddings of typed label sets for one model, computed once per distinct text (a few kept)."""

    def __init__(self, model, keep: int = 8):
        self.model = model
        self.keep = keep
        self._cache: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()

    def plan(self, text: str | None):
        """``(entries, label_embeds (C + C', D), result)`` for the labels typed in ``text`` (None when there are
        none); ``ValueError`` (one line) for a bad label, an unknown group or a label the model already has (the
        model's own checks, :meth:`embed_labels`)."""
        entries = parse_label_lines(text or "")
        if not entries:
            return None
        key = tuple(entries)
        if key not in self._cache:
            base = hspnet_base_model(self.model)
            if base is None:
                raise ValueError("labels can be added to HSPNet models only")
            names = [name for name, _ in entries]
            groups = resolve_groups(entries, list(base.config.group_names))
            owner = self.model if hasattr(self.model, "embed_labels") else base  # the wrapper holds the tokenizer
            self._cache[key] = owner.embed_labels(names, groups, extend=True)  # the model is not changed
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        label_embeds, result = self._cache[key]
        return entries, label_embeds, result

    def scores(self, pixel_values, label_embeds) -> list[list[float]]:
        """Sigmoid scores (B, C') of the added labels (the last C' rows of ``label_embeds``) for preprocessed
        images ``pixel_values`` (B, 3, H, W)."""
        import torch

        base = hspnet_base_model(self.model)
        num_trained = base.config.num_labels
        with torch.inference_mode():
            device = base.label_eos_positions.device
            logits = base(pixel_values=pixel_values.to(device), label_embeds=label_embeds.to(device)).logits
        return torch.sigmoid(logits[:, num_trained:].float()).cpu().tolist()

    @staticmethod
    def describe(result) -> list[str]:
        return describe_label_change(result)


def render_added_labels(items: Sequence[dict], threshold: float, digits: int = 3) -> str:
    """The added labels' section of one image's card (HTML): one bar per label (``{"label", "group", "how",
    "score"}``), by decreasing score, the threshold marked; empty when there is none."""
    if not items:
        return ""
    ordered = sorted(items, key=lambda item: -item["score"])
    count = sum(item["score"] > threshold for item in ordered)
    parts = ['<details class="hsp-group hsp-added" open data-group="(added)">'
             f'<summary>Added labels, not trained on{f" ({count})" if count else ""}</summary>']
    for item in ordered:
        label = html.escape(item["label"])
        score = float(item["score"])
        width = min(max(score, 0.0), 1.0) * 100
        where = html.escape(f"group {item['group']} ({item['how']})")
        parts.append(
            f'<div class="hsp-row{" hsp-on" if score > threshold else ""}" data-label="{label}" data-added="1" '
            f'data-score="{score!r}" title="{label}: {score:.6f}, {where}"><span class="hsp-name">{label}</span>'
            f'<span class="hsp-bar"><span class="hsp-fill" style="width:{width:.1f}%"></span>'
            f'<span class="hsp-mark" style="left:{100 * threshold:.1f}%" data-threshold="{threshold!r}"></span></span>'
            f'<span class="hsp-score">{score:.{digits}f}</span></div>')
    parts.append("</details>")
    return "".join(parts)
