"""transformers' own common tests against HSPNet: `ModelTesterMixin` (tests/test_modeling_common.py) for
`HSPNetModel` and `HSPNetForImageClassification`, and `ConfigTester` (tests/test_configuration_common.py) for
`HSPNetConfig`, taken from the source distribution of the installed transformers release on the package index
(`make transformers-tests` fetches them into `.venv/transformers-tests/<version>/`; they are not copied here).

The source distribution lacks three modules the two files import; they are stand-ins here:
`exporters.test_export.ExportTesterMixin` (the release's export tests; HSPNet's `torch.export` is tested in
tests/test_modeling.py),
`generation.test_utils.GenerationTesterMixin` (HSPNet does not generate) and
`utils.test_configuration_utils.config_common_kwargs` (used only for configs without sub-configs; HSPNetConfig has
one). The flags are those of transformers' CLIP / SigLIP vision tests; every test that cannot apply is skipped with its
reason."""

import atexit
import copy
import importlib
import os
import shutil
import sys
import tempfile
import unittest
from importlib.metadata import version
from pathlib import Path
from unittest import mock

import pytest
from torch import nn

from hspnet import HSPNetConfig, HSPNetForImageClassification, HSPNetModel
from hspnet.utils.tiny_clip import tiny_clip_config

RELEASE = version("transformers")
SOURCE = Path(os.environ.get("HSPNET_TRANSFORMERS_TESTS",
                             Path(__file__).resolve().parents[1] / ".venv" / "transformers-tests")) / RELEASE
FILES = ("test_modeling_common.py", "test_configuration_common.py")
_missing = [name for name in FILES if not (SOURCE / name).is_file()]
if _missing:
    pytest.skip(f"needs {', '.join(_missing)} of the transformers {RELEASE} source distribution in {SOURCE}: run "
                "`make transformers-tests` (it downloads the release's sdist from the package index)",
                allow_module_level=True)

STAND_INS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


def _import_common_tests():
    """The two files of the release and the stand-ins, as a package `transformers_common_tests` in a temporary
    folder (removed when the interpreter exits)."""
    folder = Path(tempfile.mkdtemp(prefix="hspnet-transformers-tests-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    package = folder / "transformers_common_tests"
    for name in FILES:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SOURCE / name, package / name)
    for name, text in STAND_INS.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    for sub in ("", "exporters", "generation", "utils"):
        (package / sub / "__init__.py").touch()
    sys.path.insert(0, str(folder))
    return (importlib.import_module("transformers_common_tests.test_modeling_common"),
            importlib.import_module("transformers_common_tests.test_configuration_common"))


modeling_common, configuration_common = _import_common_tests()

LABELS = 6
GROUPS = ["animal", "vehicle", "plant"]


class HSPNetModelTester:
    """Inputs and shapes for the common tests: a tiny CLIP ViT tower (hidden size 32, 2 layers, 4 heads, 32 px
    images in 8 px patches: 16 patches + the class token), 6 labels in 3 groups."""

    def __init__(self, parent, batch_size=2):
        self.parent = parent
        self.batch_size = batch_size
        self.num_channels, self.image_size, self.patch_size = 3, 32, 8
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 32, 2, 4
        self.seq_length = (self.image_size // self.patch_size) ** 2 + 1
        self.num_labels = LABELS
        self.is_training = True

    def get_config(self) -> HSPNetConfig:
        return HSPNetConfig(
            clip_config=tiny_clip_config(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                                         image_size=self.image_size, patch_size=self.patch_size),
            id2label={i: f"label {i}" for i in range(LABELS)}, group_names=list(GROUPS),
            label_to_group=[i % len(GROUPS) for i in range(LABELS)], prompt_length=12,
        )

    def prepare_config_and_inputs_for_common(self):
        pixel_values = modeling_common.floats_tensor(
            [self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), {"pixel_values": pixel_values}


class HSPNetCommonModelTest(modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (HSPNetModel, HSPNetForImageClassification)
    # as transformers' CLIP / SigLIP vision tests: the vision tower has no token embeddings to resize
    test_resize_embeddings = False
    has_attentions = True
    _is_composite = True  # a CLIP inside: attention implementations are set per sub-config

    def setUp(self):
        self.model_tester = HSPNetModelTester(self)
        # what transformers' own auto tables say of an in-library model: HSPNetModel is the base model (no loss),
        # HSPNetForImageClassification the image classifier (labels: one observed positive per image)
        tables = modeling_common
        for table, name in ((tables.MODEL_MAPPING_NAMES, "HSPNetModel"),
                            (tables.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, "HSPNetForImageClassification")):
            patcher = mock.patch.dict(table, {"hspnet": name})
            patcher.start()
            self.addCleanup(patcher.stop)

    # --- as transformers' vision tests: the input embedding is the patch embedding, there is no output embedding ---
    def test_model_get_set_embeddings(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config))
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            self.assertIs(model.get_input_embeddings(), model.base_model.clip.vision_model.embeddings.patch_embedding)
            output = model.get_output_embeddings()
            self.assertTrue(output is None or isinstance(output, nn.Linear))

    # --- what cannot apply, with the reason ---
    def test_can_load_ignoring_mismatched_shapes(self):
        self.skipTest("the label count is the hierarchy's (id2label, group_names, label_to_group): HSPNet has no "
                      "classifier layer that num_labels resizes, and a config with other labels builds another model")

    def test_problem_types(self):
        self.skipTest("HSPNet is multi-label by construction (problem_type multi_label_classification only: the config "
                      "refuses the others, tests/test_config.py) and the test's num_labels 2 would need another label "
                      "hierarchy; its multi-label loss is tested in tests/test_modeling.py and tests/test_losses.py")


class HSPNetConfigCommonTest(unittest.TestCase):
    def test_config(self):
        # a placeholder HSPNetConfig (no labels yet, as transformers builds configs internally) and a full hierarchy
        configuration_common.ConfigTester(self, config_class=HSPNetConfig, has_text_modality=False,
                                          common_properties=[]).run_common_tests()
        tester = configuration_common.ConfigTester(
            self, config_class=HSPNetConfig, has_text_modality=False, common_properties=["num_labels", "num_groups"],
            clip_config=tiny_clip_config().to_dict(), id2label={i: f"label {i}" for i in range(LABELS)},
            group_names=list(GROUPS), label_to_group=[i % len(GROUPS) for i in range(LABELS)])
        tester.create_and_test_config_common_properties()
        tester.create_and_test_config_to_json_file()
        tester.create_and_test_config_from_and_save_pretrained()
        tester.create_and_test_config_from_and_save_pretrained_subfolder()
