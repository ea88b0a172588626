"""The label graph (docs/method.md, section 2): the relation a model is given or computes (2.1), `process_relation` by
hand and on the authors' VOC relation (2.2-2.4), against a plain loop implementation and the released top-k
selection, in any row blocks; the graph survives casting the model to half precision."""

from pathlib import Path

import numpy as np
import pytest
import torch

from hspnet import process_relation

FIXTURES = Path(__file__).parent / "fixtures"


def test_four_by_four_by_hand():
    R = torch.tensor(
        [
            [1.0, 0.9, 0.8, 0.7],
            [0.9, 1.0, 0.6, 0.5],
            [0.8, 0.6, 1.0, 0.95],
            [0.7, 0.5, 0.95, 1.0],
        ]
    )
    # k = int(0.75 * 4) = 3 entries kept per row (the diagonal 1.0 is always one of them), diagonal then zeroed:
    # row 0 keeps 0.9, 0.8 (drops 0.7): sum 1.7   row 1 keeps 0.9, 0.6 (drops 0.5): sum 1.5
    # row 2 keeps 0.8, 0.95 (drops 0.6): sum 1.75 row 3 keeps 0.7, 0.95 (drops 0.5): sum 1.65
    # off-diagonal = 0.2 * value / sum, diagonal = 1 - 0.2
    expected = torch.tensor(
        [
            [0.8, 0.2 * 0.9 / 1.7, 0.2 * 0.8 / 1.7, 0.0],
            [0.2 * 0.9 / 1.5, 0.8, 0.2 * 0.6 / 1.5, 0.0],
            [0.2 * 0.8 / 1.75, 0.0, 0.8, 0.2 * 0.95 / 1.75],
            [0.2 * 0.7 / 1.65, 0.0, 0.2 * 0.95 / 1.65, 0.8],
        ]
    )
    torch.testing.assert_close(process_relation(R, 0.75, 0.2), expected)


def test_other_settings_by_hand():
    R = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]])
    # keep ratio 1.0: nothing dropped; p = 0.5
    expected = torch.tensor(
        [
            [0.5, 0.5 * 0.5 / 0.7, 0.5 * 0.2 / 0.7],
            [0.5 * 0.5 / 0.9, 0.5, 0.5 * 0.4 / 0.9],
            [0.5 * 0.2 / 0.6, 0.5 * 0.4 / 0.6, 0.5],
        ]
    )
    torch.testing.assert_close(process_relation(R, 1.0, 0.5), expected)


def test_single_group_keeps_itself():
    # int(0.75 * 1) = 0 neighbours: the released code divides 0 by 0; we keep the node alone (documented choice)
    torch.testing.assert_close(process_relation(torch.tensor([[1.0]])), torch.tensor([[1.0]]))


def voc_relation():
    return torch.from_numpy(np.loadtxt(FIXTURES / "relation_voc_super.txt", dtype=np.float32))


def test_authors_voc_label_block_properties():
    R = voc_relation()
    assert R.shape == (24, 24)
    block = R[:20, :20]
    A = process_relation(block)
    # Derived by hand: in each of the 20 rows, int(0.75 * 20) = 15 entries are kept; the diagonal (~1.0) is the row
    # maximum, so 14 neighbours remain; the diagonal is 0.8; the off-diagonal entries are the 14 largest similarities
    # of the row, scaled to sum to 0.2, so every row sums to 1 and the ratios between neighbours are the raw ratios.
    for i in range(20):
        off = A[i].clone()
        off[i] = 0
        neighbours = (off > 0).nonzero().flatten().tolist()
        assert len(neighbours) == 14
        raw = block[i].clone()
        raw[i] = -1
        assert sorted(neighbours) == sorted(torch.topk(raw, 14).indices.tolist())
        assert A[i, i].item() == pytest.approx(0.8)
        assert A[i].sum().item() == pytest.approx(1.0, abs=1e-6)
        j, k = neighbours[0], neighbours[1]
        assert (A[i, j] / A[i, k]).item() == pytest.approx((block[i, j] / block[i, k]).item(), rel=1e-5)


def test_authors_voc_group_block_by_hand():
    R = voc_relation()
    A = process_relation(R[20:, 20:])
    # groups: vehicles, household, animals, person; k = int(0.75 * 4) = 3, so two neighbours per row.
    # row vehicles: raw [1, .8507036, .8777097, .8456455] keeps household and animals (drops person)
    s = 0.8507036 + 0.8777097
    assert A[0].tolist() == pytest.approx([0.8, 0.2 * 0.8507036 / s, 0.2 * 0.8777097 / s, 0.0], abs=1e-6)
    # row person: raw [.8456455, .86604047, .89981765, 1] keeps household and animals (drops vehicles)
    s = 0.86604047 + 0.89981765
    assert A[3].tolist() == pytest.approx([0.0, 0.2 * 0.86604047 / s, 0.2 * 0.89981765 / s, 0.8], abs=1e-6)


def test_matches_plain_loop_implementation_on_voc():
    from tests.reference_hspnet import plain_process_relation

    R = voc_relation()
    for block in (R[:20, :20], R[20:, 20:]):
        expected = plain_process_relation(block.tolist()).float()
        torch.testing.assert_close(process_relation(block), expected)


def released_keep_top_k(rows, k):
    """Step (1) as the released code writes it: `torch.topk` then `scatter_` into zeros."""
    kept = torch.zeros_like(rows)
    if k > 0:
        values, indices = torch.topk(rows, k, dim=1)
        kept.scatter_(1, indices, values)
    return kept


def _relation_cases():
    generator = torch.Generator().manual_seed(3)
    floats = torch.rand(37, 37, generator=generator) * 0.4 + 0.6  # cosine similarities as released: 0.6 to 1.0
    counts = torch.randint(0, 4, (37, 37), generator=generator).float()  # many ties at non-zero boundaries
    sparse = torch.where(torch.rand(37, 37, generator=generator) < 0.6, 0.0, floats)  # the boundary is a tie of zeros
    negative = floats - 1.3  # every value below zero: the kept zeros of other rows are not special here
    with_nan = floats.clone()
    with_nan[5, 7] = float("nan")
    with_inf = floats.clone()
    with_inf[2, 3], with_inf[4, 1] = float("inf"), float("-inf")
    constant = torch.full((9, 9), 0.7)  # one tie across the whole row
    return {"floats": floats, "counts": counts, "sparse": sparse, "negative": negative, "nan": with_nan,
            "inf": with_inf, "constant": constant}


@pytest.mark.parametrize("case", sorted(_relation_cases()))
@pytest.mark.parametrize("keep_ratio", [0.0, 0.1, 0.5, 0.75, 1.0])
def test_selection_keeps_exactly_what_topk_keeps(case, keep_ratio):
    from hspnet.models.hspnet.modeling_label_graph import _keep_top_k

    rows = _relation_cases()[case]
    k = int(keep_ratio * rows.shape[1])
    torch.testing.assert_close(_keep_top_k(rows, k), released_keep_top_k(rows, k), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("case", ["floats", "counts", "sparse"])
@pytest.mark.parametrize("block_rows", [1, 5, 1024])
def test_whole_procedure_equals_the_released_one_in_any_row_blocks(case, block_rows):
    rows = _relation_cases()[case]
    n = rows.shape[0]
    kept = released_keep_top_k(rows, int(0.75 * n))
    kept.fill_diagonal_(0.0)
    row_sum = kept.sum(dim=1, keepdim=True)
    expected = kept / row_sum * 0.2
    expected.fill_diagonal_(0.8)
    torch.testing.assert_close(process_relation(rows, block_rows=block_rows), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# The relation of a model
# ----------------------------------------------------------------------------------------------------------------------


def test_given_relation_is_used_and_checked(make_model, tmp_path):
    import numpy as np

    relation = np.random.default_rng(0).uniform(0.6, 1.0, size=(10, 10)).astype(np.float32)
    np.save(tmp_path / "rel.npy", relation)
    model = make_model(relation=str(tmp_path / "rel.npy"))
    torch.testing.assert_close(model.hspnet.relation, torch.from_numpy(relation))
    with pytest.raises(ValueError, match=r"relation has shape \(9, 9\), expected \(10, 10\)"):
        make_model(relation=relation[:9, :9])


def test_half_precision_cast_keeps_the_graph():
    """Casting the model must not round the raw similarities: top-k on rounded values would pick other neighbours."""
    from hspnet import HSPNetConfig, HSPNetModel
    from hspnet.utils.tiny_clip import tiny_clip_config

    rng = np.random.default_rng(0)
    n_labels = 12
    relation = torch.from_numpy(rng.uniform(0.80, 0.81, size=(15, 15)).astype(np.float32))  # near-ties in bf16
    config = HSPNetConfig(clip_config=tiny_clip_config(), id2label={i: f"l{i}" for i in range(n_labels)},
                          group_names=["a", "b", "c"], label_to_group=[i % 3 for i in range(n_labels)])
    model = HSPNetModel(config)
    model.set_relation(relation)
    fp32 = model.adjacency()
    rounded = process_relation(relation[:n_labels, :n_labels].bfloat16())
    assert not torch.equal((rounded > 0), (fp32[0] > 0))  # the hazard is real for these values
    for dtype in (torch.bfloat16, torch.float16):
        model.to(dtype)
        assert model.relation.dtype == torch.float32
        for got, want in zip(model.adjacency(), fp32):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
