"""`HSPNetConfig`: its defaults (docs/method.md, section 1.10), the hierarchy it holds (section 1.1), and bad values,
which raise ONE ValueError naming the field and the value, when built, assigned, or loaded from a file.

The expected behaviour is worked out from what each field means (docs/method.md, section 1.7: the logits are
`logit_scale * cosine`, so a scale that is NaN, infinite or <= 0 makes every score NaN or inverts the ranking;
section 2.2: a keep ratio outside (0, 1] keeps no entry or more entries than exist; ...), never from the
implementation.
"""

import ast
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import hspnet  # noqa: F401  (registers the auto classes)
from hspnet import HSPNetConfig, HSPNetForImageClassification
from hspnet.utils.tiny_clip import tiny_clip_config

NAN, INF = float("nan"), float("inf")


def make(**overrides):
    options = dict(
        clip_config=tiny_clip_config(),
        id2label={0: "cat", 1: "dog", 2: "car"},
        group_names=["animal", "vehicle"],
        label_to_group=[0, 0, 1],
    )
    options.update(overrides)
    return HSPNetConfig(**options)


def one_line_error(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert message.startswith("HSPNetConfig:"), message
    return message


# ----------------------------------------------------------------------------------------------------------------------
# Defaults, the hierarchy, a round trip
# ----------------------------------------------------------------------------------------------------------------------


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


def test_placeholder_config_is_still_accepted():
    # transformers builds `HSPNetConfig()` internally (e.g. to_diff_dict); it must stay valid
    config = HSPNetConfig()
    assert config.logit_scale == 10.0 and math.isfinite(config.gcn_gamma_init)
    assert make().to_diff_dict()["label_to_group"] == [0, 0, 1]  # builds HSPNetConfig() inside


def test_good_config_round_trips_unchanged(tmp_path):
    config = make(logit_scale=5.0, gcn_negative_slope=0.1, loss="epr", loss_kwargs={"expected_num_pos": 1.5})
    config.save_pretrained(tmp_path)
    loaded = HSPNetConfig.from_pretrained(tmp_path)
    assert (loaded.logit_scale, loaded.gcn_negative_slope, loaded.loss_kwargs) == (5.0, 0.1, {"expected_num_pos": 1.5})


def test_numbers_are_normalised_to_json_types(tmp_path):
    config = make(
        logit_scale=np.float32(5.0),
        gcn_hidden_dims=np.array([8, 16]),
        n_ctx=np.int64(2),
        ctx_init="X X",
        label_to_group=np.array([0, 0, 1]),
    )
    assert type(config.logit_scale) is float and config.logit_scale == 5.0
    assert config.gcn_hidden_dims == [8, 16] and all(type(d) is int for d in config.gcn_hidden_dims)
    assert type(config.n_ctx) is int and config.label_to_group == [0, 0, 1]
    assert all(type(g) is int for g in config.label_to_group)
    config.save_pretrained(tmp_path)  # JSON-serialisable
    assert json.loads((tmp_path / "config.json").read_text())["gcn_hidden_dims"] == [8, 16]


def test_configuration_file_imports_only_what_remote_code_may_import():
    # copied next to saved weights: transformers, huggingface_hub, the standard library and its sibling losses.py
    tree = ast.parse((Path(hspnet.__file__).parent / "models" / "hspnet" / "configuration_hspnet.py").read_text())
    roots, relative = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.level == 1 and node.module, "only `from .sibling import name`"
                relative.add(node.module)
            else:
                roots.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"__future__", "transformers", "huggingface_hub", "torch"}
    assert roots <= allowed, roots - allowed
    assert relative <= {"losses", "losses_base"}, relative


# ----------------------------------------------------------------------------------------------------------------------
# Bad values: one line naming the field and the value
# ----------------------------------------------------------------------------------------------------------------------


# (field, bad value): every numeric field non-finite, out of range, and of the wrong type
BAD_FIELDS = [
    ("logit_scale", NAN),
    ("logit_scale", INF),
    ("logit_scale", -INF),
    ("logit_scale", 0.0),
    ("logit_scale", -10.0),
    ("logit_scale", "10"),
    ("logit_scale", True),
    ("logit_scale", None),
    ("n_ctx", 0),
    ("n_ctx", -1),
    ("n_ctx", True),
    ("n_ctx", 4.0),
    ("n_ctx", "4"),
    ("gcn_negative_slope", NAN),
    ("gcn_negative_slope", -0.2),
    ("gcn_negative_slope", "0.2"),
    ("gcn_gamma_init", NAN),
    ("gcn_gamma_init", INF),
    ("gcn_gamma_init", "0.9"),
    ("relation_keep_ratio", 0.0),
    ("relation_keep_ratio", 1.5),
    ("relation_keep_ratio", NAN),
    ("relation_keep_ratio", "0.75"),
    ("relation_reweight_p", -0.1),
    ("relation_reweight_p", 1.1),
    ("relation_reweight_p", NAN),
    ("resnet_width", 0),
    ("resnet_width", -64),
    ("resnet_width", 64.0),
    ("resnet_width", True),
    ("resnet_heads", 0),
    ("resnet_heads", 2.5),
    ("resnet_image_size", 0),
    ("resnet_image_size", "224"),
    ("resnet_layers", [3, 4, 6, 0]),
    ("resnet_layers", [3, 4, 6, 1.5]),
    ("resnet_layers", [3, 4, 6, True]),
    ("resnet_layers", "3463"),
    ("gcn_hidden_dims", [0, 64]),
    ("gcn_hidden_dims", [64]),
    ("gcn_hidden_dims", [64, 64, 64]),
    ("gcn_hidden_dims", [True, 64]),
    ("gcn_hidden_dims", [64.5, 64]),
    ("freeze_text_encoder", "false"),
    ("freeze_text_encoder", 1),
    ("freeze_text_encoder", None),
    ("ctx_init", 4),
    ("group_prompt_template", 3),
    ("vision_backbone", 3),
    ("loss", 3),
    ("loss", "splcc"),
    ("loss_kwargs", "tau=0.5"),
    ("loss_kwargs", {1: 0.5}),
    ("group_names", "animal"),
    ("group_names", ["animal", 2]),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_bad_field_raises_value_error_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as excinfo:
        make(**{field: value})
    message = one_line_error(excinfo)
    assert field in message, message
    assert repr(value) in message, message


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_bad_field_assignment_raises_and_keeps_the_old_value(field, value):
    config = make()
    before = getattr(config, field)
    with pytest.raises(ValueError) as excinfo:
        setattr(config, field, value)
    assert field in one_line_error(excinfo)
    assert getattr(config, field) == before


def test_assigning_nan_logit_scale_to_a_model_config_is_refused():
    # the logits are read as `config.logit_scale * cosine` at every forward pass
    config = make()
    with pytest.raises(ValueError, match=r"logit_scale must be a finite number > 0, got nan"):
        config.logit_scale = NAN
    assert config.logit_scale == 10.0


@pytest.mark.parametrize(
    "field, value",
    [
        ("logit_scale", 1e-3),
        ("logit_scale", 100),
        ("relation_keep_ratio", 1.0),
        ("relation_reweight_p", 0.0),
        ("relation_reweight_p", 1.0),
        ("gcn_negative_slope", 0.0),
        ("gcn_gamma_init", -0.5),
        ("gcn_gamma_init", 1.5),
    ],
)
def test_edge_values_are_accepted(field, value):
    assert getattr(make(**{field: value}), field) == value


def test_group_prompt_template_must_format_with_one_name():
    with pytest.raises(ValueError, match=r"group_prompt_template 'a \{\} of \{\}' must contain exactly one"):
        make(group_prompt_template="a {} of {}")
    with pytest.raises(ValueError, match=r"group_prompt_template"):
        make(group_prompt_template="a {name} {}")
    assert make(group_prompt_template="a photo of a {}, a kind of thing.").group_prompt_template.endswith("thing.")


def test_problem_type_other_than_multi_label_is_refused():
    with pytest.raises(ValueError, match="problem_type must be 'multi_label_classification'.*'single_label"):
        make(problem_type="single_label_classification")
    assert make(problem_type="multi_label_classification").problem_type == "multi_label_classification"
    assert make().problem_type == "multi_label_classification"


@pytest.mark.parametrize(
    "loss, loss_kwargs, fragment",
    [
        ("splc", {"tau": NAN}, "tau must be a finite number in (0, 1), got nan"),
        ("splc", {"tau": 1.0}, "tau must be a finite number in (0, 1), got 1.0"),
        ("splc", {"change_epoch": -1}, "change_epoch must be an int >= 0, got -1"),
        ("splc", {"change_epoch": 1.5}, "change_epoch must be an int >= 0, got 1.5"),
        ("splc", {"change_epoch": True}, "change_epoch must be an int >= 0, got True"),
        ("splc", {"margin": INF}, "margin must be a finite number, got inf"),
        ("splc", {"gamma": "2"}, "gamma must be a finite number >= 0, got '2'"),
        ("splc", {"taus": 0.5}, "unknown parameter(s) 'taus'"),
        ("epr", {"expected_num_pos": 0}, "expected_num_pos must be a finite number > 0, got 0"),
        # 3 labels: at most 3 positives per image
        ("epr", {"expected_num_pos": 3.5}, "expected_num_pos (the expected number of positive labels per image) must "
                                           "be in (0, num_labels=3], got 3.5"),
        ("role", {"expected_num_pos": 4}, "num_labels=3"),
        ("ll_r", {"delta_rel": NAN}, "delta_rel must be a finite number in [0, 1], got nan"),
        ("asl", {"clip": 1.0}, "clip must be a finite number in [0, 1), got 1.0"),
        ("focal", {"alpha": 2.0}, "alpha must be a finite number in [0, 1], got 2.0"),
    ],
)
def test_loss_kwargs_values_are_checked(loss, loss_kwargs, fragment):
    with pytest.raises(ValueError) as excinfo:
        make(loss=loss, loss_kwargs=loss_kwargs)
    message = one_line_error(excinfo)
    assert fragment in message and "loss_kwargs" in message, message


def test_valid_loss_kwargs_are_accepted():
    assert make(loss="epr", loss_kwargs={"expected_num_pos": 3}).loss_kwargs == {"expected_num_pos": 3}
    assert make(loss="splc", loss_kwargs={"change_epoch": 2, "tau": 0.7}).loss_kwargs["change_epoch"] == 2
    assert make(loss="role", loss_kwargs={}).loss == "role"  # num_train_images is run state, given at training


def test_a_config_edited_after_it_was_made_is_checked_when_a_model_is_built():
    config = make(loss="splc")
    config.loss_kwargs = {"tau": 5.0}  # a dict set after the checks of __post_init__ ran
    with pytest.raises(ValueError) as excinfo:
        HSPNetForImageClassification(config)
    message = one_line_error(excinfo)
    assert "loss 'splc'" in message and "tau" in message, message
    config.loss_kwargs = {"tau": 0.7}
    assert HSPNetForImageClassification(config).loss_module.tau == 0.7


# ----------------------------------------------------------------------------------------------------------------------
# Bad config files: the error names the file
# ----------------------------------------------------------------------------------------------------------------------


def edit_saved_config(folder, **changes):
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"logit_scale": NAN}, "logit_scale must be a finite number > 0, got nan"),
        ({"logit_scale": "10"}, "logit_scale must be a finite number > 0, got '10' (str)"),
        ({"relation_keep_ratio": 1.5}, "relation_keep_ratio must be a finite number in (0, 1], got 1.5"),
        ({"n_ctx": 0}, "n_ctx must be an int >= 1, got 0"),
        ({"loss_kwargs": {"tau": 2}}, "tau must be a finite number in (0, 1), got 2"),
    ],
)
def test_loading_a_bad_config_json_names_field_value_and_file(tmp_path, changes, fragment):
    from transformers import AutoConfig

    make().save_pretrained(tmp_path)
    path = edit_saved_config(tmp_path, **changes)
    for load in (HSPNetConfig.from_pretrained, AutoConfig.from_pretrained):
        with pytest.raises(ValueError) as excinfo:
            load(str(tmp_path))
        message = one_line_error(excinfo)
        assert fragment in message and message.endswith(f"(in {path})"), message
    with pytest.raises(ValueError) as excinfo:
        HSPNetConfig.from_json_file(path)
    assert one_line_error(excinfo).endswith(f"(in {path})")
    with pytest.raises(ValueError) as excinfo:
        HSPNetConfig.from_dict(json.loads(path.read_text()))
    message = one_line_error(excinfo)
    assert fragment in message and message.endswith("(in the config dict given to HSPNetConfig.from_dict)")


def test_loading_a_model_with_a_bad_config_json_names_the_file(tmp_path):
    from transformers import AutoModelForImageClassification

    HSPNetForImageClassification(make()).save_pretrained(tmp_path)
    path = edit_saved_config(tmp_path, logit_scale=-1.0)
    for load in (HSPNetForImageClassification.from_pretrained, AutoModelForImageClassification.from_pretrained):
        with pytest.raises(ValueError) as excinfo:
            load(str(tmp_path))
        assert one_line_error(excinfo) == (
            f"HSPNetConfig: logit_scale must be a finite number > 0, got -1.0 (in {path})"
        )


def test_bad_keyword_override_at_load_is_not_blamed_on_the_file(tmp_path):
    make().save_pretrained(tmp_path)
    with pytest.raises(ValueError) as excinfo:
        HSPNetConfig.from_pretrained(tmp_path, logit_scale=-1.0)
    assert one_line_error(excinfo) == (
        "HSPNetConfig: logit_scale must be a finite number > 0, got -1.0 (in the keyword argument logit_scale=, "
        "not the config file)"
    )
    assert HSPNetConfig.from_pretrained(tmp_path, logit_scale=3.0).logit_scale == 3.0
