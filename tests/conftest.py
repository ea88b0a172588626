import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

LABELS = ["cat", "dog", "traffic_light", "car", "bus", "person"]
GROUPS = ["animal", "outdoor", "vehicle", "person"]
LABEL_TO_GROUP = [0, 0, 1, 2, 2, 3]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP checkpoint folder laid out like a Hub repository."""
    from hspnet.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


@pytest.fixture
def hierarchy():
    return dict(labels=list(LABELS), groups=list(GROUPS), label_to_group=list(LABEL_TO_GROUP))


@pytest.fixture
def make_model(tiny_clip_dir, hierarchy):
    """Build an HSPNetForImageClassification from the tiny CLIP (seeded, so GCN/meta-net weights are fixed)."""
    from hspnet import HSPNetForImageClassification

    def factory(seed=0, **kwargs):
        torch.manual_seed(seed)
        options = dict(hierarchy)
        options.update(kwargs)
        return HSPNetForImageClassification.from_clip(tiny_clip_dir, **options)

    return factory


@pytest.fixture
def pixel_values():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=generator)
