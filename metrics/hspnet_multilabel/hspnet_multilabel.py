"""HSPNet multi-label metrics for the Hugging Face ``evaluate`` library.

Load it offline from a checkout of the repository (path relative to the
repository root)::

    import evaluate
    metric = evaluate.load("metrics/hspnet_multilabel")
    metric.compute(predictions=[[0.9, 0.2], [0.1, 0.7]], references=[[1, 0], [0, 1]])

This module is a thin wrapper: it imports ``hspnet.evaluation.metrics`` and
``hspnet.evaluation.average_precision``, so the ``hspnet`` package must be
installed (``pip install -e .`` from the repository). The library functions in
those modules are the primary API; ``evaluate`` is in maintenance mode.
"""

import datasets
import evaluate

from hspnet.evaluation.average_precision import _check_scores, _check_targets
from hspnet.evaluation.metrics import compute_all_metrics

_DESCRIPTION = """\
Multi-label classification metrics as reported for HSPNet (ACM MM 2023):
mAP in two definitions and the threshold / top-k precision, recall and F1
metrics. All values are percentages.

- `mAP`: the ASL / ML-GCN / HSPNet definition (per class, sort by score
  descending with a stable sort, AP = mean precision at the rank of each
  positive; classes without positives count as 0). This is the one to report.
- `mAP_tie_aware`: scikit-learn's `average_precision_score` definition (tied
  scores form one group), macro over classes, classes without positives 0.
- `CP`, `CR`, `CF1` (ML-GCN: 2*CP*CR/(CP+CR)), `mean_class_F1` (mean of the
  per-class F1, the released HSPNet code's "F_C"), `OP`, `OR`, `OF1` at
  `prob > threshold`; the same with the suffix `_top{k}` for the top-k labels
  of each sample (with fewer than k labels, the min(k, C) best labels, i.e.
  all of them; the suffix keeps the requested k). 0/0 counts as 0.
- `num_samples`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): per-label scores of each sample,
        probabilities in [0, 1], or logits with `from_logits=True`.
    references (`list` of `list` of `int`): multi-hot ground truth (0/1).
    threshold (`float`, default 0.5): decision threshold on probabilities.
    k (`int`, default 3): number of labels predicted per sample for the top-k metrics
        (clamped to the number of labels C; the keys keep the suffix `_top{k}`).
    from_logits (`bool`, default False): apply a sigmoid to `predictions` before thresholding.
    topk_min_score (`float`, optional): a top-k label is predicted only if its
        score is >= this value (ML-GCN uses 0.0 on logits).
Returns:
    `dict` of floats, see the description.
Raises:
    `ValueError` naming the argument: empty input, NaN or infinite predictions,
    references other than 0/1 or of another shape, threshold outside [0, 1],
    k not an int >= 1, a non-finite topk_min_score, from_logits not a bool.
Example:
    >>> metric = evaluate.load("metrics/hspnet_multilabel")
    >>> metric.compute(predictions=[[0.9, 0.2], [0.1, 0.7]], references=[[1, 0], [0, 1]], k=1)["mAP"]
    100.0
"""

_CITATION = """\
@inproceedings{wang2023hierarchical,
  title={Hierarchical Prompt Learning Using CLIP for Multi-label Classification with Single Positive Labels},
  author={Wang, Ao and Chen, Hui and Lin, Zijia and Ding, Zixuan and Liu, Pengzhang and Bao, Yongjun and Yan, Weipeng and Ding, Guiguang},
  booktitle={Proceedings of the 31st ACM International Conference on Multimedia},
  year={2023}
}
"""

_List = getattr(datasets, "List", None) or datasets.Sequence


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class HspnetMultilabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": _List(datasets.Value("float64")),
                    "references": _List(datasets.Value("int32")),
                }
            ),
        )

    def _compute(self, predictions, references, threshold=0.5, k=3, from_logits=False, topk_min_score=None):
        # the same checks as compute_all_metrics, with the names of THIS API in the error messages
        _check_targets(references, _check_scores(predictions, "predictions").shape, "references")
        return compute_all_metrics(
            predictions,
            references,
            from_logits=from_logits,
            threshold=threshold,
            k=k,
            topk_min_score=topk_min_score,
        )
