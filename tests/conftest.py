import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# torch's threads per test process: 2 (the cores of the CI machine), or 1 in each of pytest-xdist's workers (`make
# test` runs two), exported as OMP_NUM_THREADS too, so an interpreter a test starts adds floats in the same order.
TORCH_THREADS = 1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2
os.environ["OMP_NUM_THREADS"] = str(TORCH_THREADS)
torch.set_num_threads(TORCH_THREADS)

LABELS = ["cat", "dog", "traffic_light", "car", "bus", "person"]
GROUPS = ["animal", "outdoor", "vehicle", "person"]
LABEL_TO_GROUP = [0, 0, 1, 2, 2, 3]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP checkpoint folder laid out like a Hub repository."""
    from hspnet.utils.tiny_clip import save_tiny_clip

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


TINY_DEMO_OPTIONS = {"num_train": 64, "num_test": 32, "image_size": 32}
"""The small demo set of `trained_tiny_model` (prepare it with these options and `tiny_demo_cache` to get its data)."""


@pytest.fixture(scope="session")
def tiny_demo_model_dir(tiny_clip_dir, tmp_path_factory):
    """A saved, untrained tiny HSPNet on the built-in demo data's hierarchy (12 labels, 3 groups), seed 0. Shared by
    the session: copy it before changing it."""
    from hspnet import HSPNetForImageClassification
    from hspnet.data.demo import demo_hierarchy

    torch.manual_seed(0)
    model = HSPNetForImageClassification.from_clip(tiny_clip_dir, **demo_hierarchy().model_kwargs())
    folder = tmp_path_factory.mktemp("tiny-demo-model")
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_demo_cache(tmp_path_factory):
    """The datasets cache folder of `trained_tiny_model`'s demo data."""
    return str(tmp_path_factory.mktemp("tiny-demo-cache"))


@pytest.fixture(scope="session")
def trained_tiny_model(tiny_demo_cache, tmp_path_factory):
    """A tiny HSPNet on the tiny random CLIP, trained once per session by `hspnet.training.train` for one epoch on
    the demo data (`TINY_DEMO_OPTIONS`): the model folder exactly as training writes it. Copy it before changing it."""
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train

    output_dir = str(tmp_path_factory.mktemp("trained-tiny") / "model")
    train(TrainingConfig(
        clip_model="tiny-random", dataset="demo", dataset_options=dict(TINY_DEMO_OPTIONS), cache_dir=tiny_demo_cache,
        output_dir=output_dir, epochs=1, schedule_epochs=1, batch_size=16, with_tracking=False,
        evaluate_before_training=False, checkpointing_steps=None, lr=1e-3, gcn_lr=5e-3,
    ))
    return output_dir


# Fixtures kept in their own modules (one owner each); star-imported so pytest registers them once, for the session.
from tests.plugin_fresh_interpreter import *  # noqa: E402,F401,F403
from tests.plugin_training_runs import *  # noqa: E402,F401,F403
