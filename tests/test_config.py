import pytest

from hspnet import HSPNetConfig
from hspnet.utils.tiny_clip import tiny_clip_config


def make(**overrides):
    options = dict(
        clip_config=tiny_clip_config(),
        id2label={0: "cat", 1: "dog", 2: "car"},
        group_names=["animal", "vehicle"],
        label_to_group=[0, 0, 1],
    )
    options.update(overrides)
    return HSPNetConfig(**options)


def test_defaults_follow_the_reference():
    config = make()
    assert config.problem_type == "multi_label_classification"
    assert config.group_prompt_template == "a photo of a {}."
    assert config.n_ctx == 4 and config.ctx_init == "X X X X"
    D = config.clip_config.projection_dim
    assert config.gcn_hidden_dims == [2 * D, 2 * D]
    assert config.gcn_negative_slope == 0.2 and config.gcn_gamma_init == 0.9
    assert config.relation_keep_ratio == 0.75 and config.relation_reweight_p == 0.2
    assert config.logit_scale == 10.0
    assert config.label_names == ["cat", "dog", "car"] and config.num_groups == 2


def test_round_trip(tmp_path):
    config = make(n_ctx=2, ctx_init="X X")
    config.save_pretrained(tmp_path)
    loaded = HSPNetConfig.from_pretrained(tmp_path)
    assert loaded.label_names == ["cat", "dog", "car"]
    assert loaded.label_to_group == [0, 0, 1] and loaded.group_names == ["animal", "vehicle"]
    assert loaded.n_ctx == 2 and loaded.clip_config.text_config.hidden_size == 32
    assert loaded.label2id == {"cat": 0, "dog": 1, "car": 2}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(label_to_group=[0, 1]), "label_to_group has 2 entries but there are 3 labels"),
        (dict(label_to_group=[0, 0, 2]), r"label_to_group\[2\] \(label 'car'\) is 2"),
        (dict(label_to_group=[0, 0, -1]), r"label_to_group\[2\] \(label 'car'\) is -1"),
        (dict(group_names=["animal", "vehicle", "plant"]), r"group\(s\) \['plant'\] have no label"),
        (dict(id2label={}, label_to_group=[]), "label set is empty"),
        (dict(id2label={0: "cat", 1: "cat", 2: "car"}), "duplicate label name 'cat'"),
        (dict(group_names=["animal", "animal"]), "duplicate group name 'animal'"),
        (dict(group_names=[]), "group_names is empty"),
        (dict(n_ctx=3), "ctx_init 'X X X X' has 4 words but n_ctx is 3"),
        (dict(group_prompt_template="a photo"), "has no '{}'"),
        (dict(relation_keep_ratio=0.0), "relation_keep_ratio"),
    ],
)
def test_validation_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        make(**overrides)
