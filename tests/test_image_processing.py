"""HSPNetImageProcessor reproduces the authors' torchvision preprocessing to the pixel.

The reference below is written independently of the processor with PIL and numpy only: torchvision's
`Resize(n, BICUBIC)` on a PIL image (short side -> n, long side -> int(n * long / short), PIL bicubic),
`CenterCrop(n)` (zero padding of short sides, offsets int(round((side - n) / 2.0))), `ToTensor` (/255) and CLIP's
`Normalize`. The test images are seeded noise on gradients, so a crop one pixel off changes the values.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import PROCESSOR_FILE, check_result, load_processor_module, make_image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
# (width, height) as PIL reports them: common COCO shapes (odd crop margins), square, and small/odd ones.
SIZES = [(640, 480), (640, 427), (427, 640), (500, 375), (612, 612), (333, 501),
         (224, 224), (225, 301), (100, 80), (224, 225), (1, 1), (999, 224)]


@pytest.fixture(scope="module")
def processor_class():
    return load_processor_module().HSPNetImageProcessor


def reference_pixels(image, size=224, resize=True):
    """The authors' `convert("RGB")` + Resize + CenterCrop + ToTensor + Normalize, with PIL and numpy only.
    Returns a (3, size, size) float32 array."""
    image = image.convert("RGB")
    width, height = image.size
    if resize:
        if width <= height:
            new_width, new_height = size, int(size * height / width)
        else:
            new_width, new_height = int(size * width / height), size
        image = image.resize((new_width, new_height), Image.BICUBIC)
    pixels = np.asarray(image)  # (H, W, 3) uint8
    missing_h, missing_w = max(size - pixels.shape[0], 0), max(size - pixels.shape[1], 0)
    pixels = np.pad(pixels, ((missing_h // 2, missing_h - missing_h // 2), (missing_w // 2, missing_w - missing_w // 2),
                             (0, 0)))
    top = int(round((pixels.shape[0] - size) / 2.0))
    left = int(round((pixels.shape[1] - size) / 2.0))
    pixels = pixels[top:top + size, left:left + size]
    values = pixels.astype(np.float32) / np.float32(255)
    values = (values - MEAN) / STD
    return values.transpose(2, 0, 1)


def torchvision_tensor_ops(pixels_hwc_uint8):
    """torchvision's ToTensor and Normalize code paths (without torchvision): the bit-exact reference for steps 4-5."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels_hwc_uint8)).permute(2, 0, 1).contiguous()
    tensor = tensor.to(dtype=torch.float32).div(255)
    mean, std = torch.as_tensor(MEAN), torch.as_tensor(STD)
    return tensor.sub_(mean[:, None, None]).div_(std[:, None, None]).numpy()


def test_torchvision_resize_and_crop_rules(processor_class):
    module = sys.modules[processor_class.__module__]
    # 640x427: 427 -> 224, 640 -> int(224 * 640 / 427) = 335; margin 111 -> offset round(55.5) = 56 (HF: 55).
    assert module.get_resize_output_size(427, 640, 224) == (224, 335)
    assert module.get_resize_output_size(640, 427, 224) == (335, 224)
    assert module.get_center_crop_offsets(224, 335, 224, 224) == (0, 56)
    # Python rounds halves to even, like torchvision: margins 1, 3, 5 -> offsets 0, 2, 2.
    assert [module.get_center_crop_offsets(224 + m, 224, 224, 224)[0] for m in (1, 3, 5)] == [0, 2, 2]


@pytest.mark.parametrize("width,height", SIZES)
def test_pixels_equal_the_authors_preprocessing(processor_class, width, height):
    image = make_image(width, height, seed=width * 1000 + height)
    out = processor_class()(image, return_tensors="np")["pixel_values"]
    assert out.shape == (1, 3, 224, 224) and out.dtype == np.float32
    expected = reference_pixels(image)
    assert np.abs(out[0] - expected).max() == 0


def test_pixels_are_bit_identical_to_torchvision_tensor_ops(processor_class):
    image = make_image(640, 427, seed=3)
    resized = np.asarray(image.resize((335, 224), Image.BICUBIC))
    expected = torchvision_tensor_ops(resized[:, 56:280])
    out = processor_class()(image, return_tensors="np")["pixel_values"][0]
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("width,height", [(640, 427), (427, 640)])
def test_hf_clip_processor_crops_one_pixel_apart(processor_class, width, height):
    """The old processor (HF's CLIPImageProcessorPil) differs for odd margins: this test would catch it."""
    from transformers import CLIPImageProcessorPil

    image = make_image(width, height, seed=7)
    hf = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    old = hf(image, return_tensors="np")["pixel_values"][0]
    new = processor_class()(image, return_tensors="np")["pixel_values"][0]
    expected = reference_pixels(image)
    assert np.abs(new - expected).max() == 0
    assert np.abs(old - expected).max() > 0.5
    # HF's crop is the authors' crop shifted by one pixel along the long side.
    shifted = expected[:, :, :-1] if width > height else expected[:, :-1, :]
    old_overlap = old[:, :, 1:] if width > height else old[:, 1:, :]
    assert np.abs(old_overlap - shifted).max() == 0


@pytest.mark.parametrize("width,height", [(100, 80), (301, 150), (150, 301), (225, 101), (224, 224)])
def test_crop_without_resize_pads_small_images_with_zeros(processor_class, width, height):
    image = make_image(width, height, seed=11)
    out = processor_class(do_resize=False)(image, return_tensors="np")["pixel_values"][0]
    expected = reference_pixels(image, resize=False)
    assert np.abs(out - expected).max() == 0
    # Padding is zero pixels before normalisation, i.e. -mean/std after it.
    if width < 224:
        np.testing.assert_array_equal(out[:, :, 0], np.broadcast_to((-MEAN / STD)[:, None], (3, 224)))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK"])
def test_other_modes_are_converted_like_convert_rgb(processor_class, mode):
    image = make_image(333, 250, seed=5, mode=mode)
    out = processor_class()(image, return_tensors="np")["pixel_values"][0]
    assert np.abs(out - reference_pixels(image)).max() == 0
    if mode == "RGBA":  # HF composites onto white; the authors' convert("RGB") drops alpha
        from transformers import CLIPImageProcessorPil

        hf = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        assert np.abs(hf(image, return_tensors="np")["pixel_values"][0] - out).max() > 0.1


def test_numpy_and_torch_inputs_match_pil(processor_class):
    processor = processor_class()
    image = make_image(640, 427, seed=2)
    hwc = np.asarray(image)
    expected = processor(image, return_tensors="np")["pixel_values"]
    for other in (hwc, hwc.transpose(2, 0, 1).copy(), torch.from_numpy(hwc.transpose(2, 0, 1).copy())):
        np.testing.assert_array_equal(processor(other, return_tensors="np")["pixel_values"], expected)
    grey = np.asarray(image.convert("L"))[..., None]  # (H, W, 1) -> repeated to RGB like convert("RGB")
    np.testing.assert_array_equal(processor(grey, return_tensors="np")["pixel_values"][0],
                                  reference_pixels(image.convert("L")))


def test_batch_of_mixed_sizes_returns_torch_tensors(processor_class):
    processor = processor_class()
    images = [make_image(w, h, seed=i) for i, (w, h) in enumerate([(640, 427), (427, 640), (100, 80), (612, 612)])]
    images.append(np.asarray(make_image(500, 375, seed=9)))
    out = processor(images=images, return_tensors="pt")
    pixels = out["pixel_values"]
    assert isinstance(pixels, torch.Tensor) and pixels.shape == (5, 3, 224, 224) and pixels.dtype == torch.float32
    for row, image in zip(pixels, images):
        image = image if isinstance(image, Image.Image) else Image.fromarray(image)
        assert np.abs(row.numpy() - reference_pixels(image)).max() == 0
    listed = processor(images=images)["pixel_values"]  # like HF: a list of (3, 224, 224) arrays without return_tensors
    assert len(listed) == 5 and all(x.shape == (3, 224, 224) for x in listed)


def test_size_sets_resize_and_crop_and_flags(processor_class):
    processor = processor_class(size=64)
    assert processor.size.shortest_edge == 64 and (processor.crop_size.height, processor.crop_size.width) == (64, 64)
    image = make_image(427, 640, seed=4)
    np.testing.assert_array_equal(processor(image, return_tensors="np")["pixel_values"][0],
                                  reference_pixels(image, size=64))
    raw = processor_class(do_rescale=False, do_normalize=False)(image, return_tensors="np")["pixel_values"][0]
    assert raw.dtype == np.uint8 and raw.shape == (3, 224, 224)
    custom = processor_class(image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    np.testing.assert_allclose(custom(image, return_tensors="np")["pixel_values"][0],
                               (raw.astype(np.float32) / 255 - 0.5) / 0.25, atol=1e-6)


def test_old_clip_processor_folders_still_load_as_hf_class(tmp_path):
    from transformers import AutoImageProcessor, CLIPImageProcessorPil

    CLIPImageProcessorPil().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "CLIPImageProcessor" and "auto_map" not in saved
    assert type(AutoImageProcessor.from_pretrained(tmp_path)).__name__.startswith("CLIPImageProcessor")


def test_saved_folder_loads_as_remote_code_without_the_package(fresh_remote_run):
    """In a fresh interpreter started with `-I -S` (site-packages only, no .pth files: the editable hspnet cannot be
    imported), AutoImageProcessor and the pipeline use the folder's copy of the processor, pixel for pixel."""
    case = fresh_remote_run["processor"]
    folder = Path(case["job"]["folder"])
    saved = json.loads((folder / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_hspnet.HSPNetImageProcessor"}
    assert saved["image_processor_type"] == "HSPNetImageProcessor" and saved["size"] == {"shortest_edge": 64}
    assert (folder / "image_processing_hspnet.py").read_text() == PROCESSOR_FILE.read_text()

    assert fresh_remote_run["report"]["hspnet_import"] == "ModuleNotFoundError"
    out = check_result(case)
    assert out["module"].startswith("transformers_modules") and out["name"] == "HSPNetImageProcessor"
    assert out["pipeline_processor"] == "HSPNetImageProcessor" and out["labels"] == ["a", "b", "c"]
    remote = np.load(case["job"]["pixels_out"])
    assert remote.shape == (3, 3, 64, 64) and np.array_equal(remote, case["expected"])


def test_every_new_model_saves_the_hspnet_processor_with_the_pixels_it_was_built_for(make_model, trained_tiny_model,
                                                                                       tmp_path):
    """What the README says: a model built on a HF CLIP folder (`from_clip(folder)`, which `hspnet train
    --clip_model FOLDER` calls), one built on OpenAI weights (`RN50.pt` & co.) and one trained on the demo's tiny
    random CLIP all save `HSPNetImageProcessor` (with its `auto_map`), at the model's resolution with CLIP's mean and
    std, and `AutoImageProcessor` gives the authors' pixels (`reference_pixels`, worked out above with PIL and numpy).
    For the first two that is what they saved before; the demo saved the tiny CLIP's own `CLIPImageProcessor`, whose
    pixels are the same on square images such as the demo's (not on 640x427, where CLIP's crop is one pixel off)."""
    from transformers import AutoImageProcessor, CLIPImageProcessorPil

    from hspnet import HSPNetForImageClassification
    from hspnet.models.openai_clip import load_openai_clip_parts
    from hspnet.utils.tiny_clip import byte_level_clip_tokenizer
    from tests.official_reference import RefCLIP, randomize

    make_model().save_pretrained(tmp_path / "hf-clip")
    torch.manual_seed(0)
    openai = randomize(RefCLIP(vision="resnet", vocab_size=514, image_size=64), 0).eval()
    HSPNetForImageClassification.from_clip(load_openai_clip_parts(openai.state_dict()),
                                           tokenizer=byte_level_clip_tokenizer(), labels=["a", "b"], groups=["g"],
                                           label_to_group=[0, 0]).save_pretrained(tmp_path / "openai")
    cases = {"hf-clip": (tmp_path / "hf-clip", 32), "openai": (tmp_path / "openai", 64),
             "demo": (Path(trained_tiny_model), 32)}
    photo, square = make_image(640, 427, seed=5), make_image(64, 64, seed=6)
    for name, (folder, size) in cases.items():
        saved = json.loads((folder / "preprocessor_config.json").read_text())
        assert saved["image_processor_type"] == "HSPNetImageProcessor", name
        assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_hspnet.HSPNetImageProcessor"}, name
        assert (saved["size"], saved["crop_size"]) == ({"shortest_edge": size}, {"height": size, "width": size}), name
        assert (saved["image_mean"], saved["image_std"]) == ([0.48145466, 0.4578275, 0.40821073],
                                                             [0.26862954, 0.26130258, 0.27577711]), name
        processor = AutoImageProcessor.from_pretrained(folder)
        for image in (photo, square):
            got = processor(images=image, return_tensors="np")["pixel_values"][0]
            np.testing.assert_array_equal(got, reference_pixels(image, size), err_msg=name)
    before = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    demo = AutoImageProcessor.from_pretrained(trained_tiny_model)
    for image in (square, make_image(64, 64, seed=7, mode="L"), make_image(32, 32, seed=8)):
        np.testing.assert_array_equal(demo(images=image, return_tensors="np")["pixel_values"],
                                      before(images=image, return_tensors="np")["pixel_values"])


# --- the fast path (`fast_pil_path`): PIL resize and crop, steps 4-5 on the whole batch: the same bits --------------

FAST_PATH_MODES = ["RGB", "L", "RGBA", "P", "CMYK", "LA", "I;16", "I", "F", "1"]


def _mode_image(width, height, seed, mode):
    """`make_image` in `mode`; 16-bit, 32-bit and float modes from grey pixels scaled to their range."""
    if mode in ("I;16", "I", "F"):
        grey = np.asarray(make_image(width, height, seed=seed, mode="L")).astype(np.float64)
        if mode == "I;16":
            return Image.fromarray((grey * 257).astype(np.uint16), mode="I;16")
        if mode == "I":
            return Image.fromarray((grey * 1000).astype(np.int32), mode="I")
        return Image.fromarray((grey / 255).astype(np.float32), mode="F")
    return make_image(width, height, seed=seed, mode=mode)


def _both_paths(processor_class, images, **kwargs):
    fast, slow = processor_class(**kwargs), processor_class(**kwargs)
    slow.fast_pil_path = False
    return fast(images=images, return_tensors="np"), slow(images=images, return_tensors="np")


@pytest.mark.parametrize("mode", FAST_PATH_MODES)
def test_fast_path_is_bit_identical_to_the_per_image_path(processor_class, mode):
    images = [_mode_image(w, h, seed=i, mode=mode) for i, (w, h) in enumerate(SIZES)]
    fast, slow = _both_paths(processor_class, images)
    assert fast["pixel_values"].dtype == slow["pixel_values"].dtype == np.float32
    assert np.array_equal(fast["pixel_values"], slow["pixel_values"])  # every bit, every image
    if mode in ("RGB", "L", "RGBA", "P", "CMYK"):
        for row, image in zip(fast["pixel_values"], images):
            assert np.array_equal(row, reference_pixels(image))


@pytest.mark.parametrize("options", [
    {}, {"size": 64}, {"do_resize": False}, {"do_center_crop": False, "size": {"height": 50, "width": 70}},
    {"do_rescale": False}, {"do_normalize": False}, {"do_rescale": False, "do_normalize": False},
    {"image_mean": (0.5, 0.4, 0.3), "image_std": (0.2, 0.3, 0.25)}, {"resample": Image.BILINEAR},
    {"size": {"height": 100, "width": 120}, "crop_size": {"height": 110, "width": 90}},
])
def test_fast_path_options_and_mixed_inputs_match_the_per_image_path(processor_class, options):
    images = [make_image(w, h, seed=i) for i, (w, h) in enumerate([(640, 427), (100, 80), (225, 301), (612, 612)])]
    images += [np.asarray(make_image(500, 375, seed=9)), torch.from_numpy(np.array(make_image(90, 120, seed=3)))]
    fast, slow = _both_paths(processor_class, images, **options)
    assert fast["pixel_values"].dtype == slow["pixel_values"].dtype
    assert np.array_equal(fast["pixel_values"], slow["pixel_values"])
    listed = processor_class(**options)(images=images)["pixel_values"]  # no return_tensors: a list, as before
    assert isinstance(listed, list) and all(np.array_equal(a, b) for a, b in zip(listed, slow["pixel_values"]))


def test_fast_path_on_files_read_like_training(processor_class, tmp_path):
    """What training reads (`open_image`: EXIF orientation applied, 16-bit and float images scaled) gives the same
    batch on both paths; a raw EXIF-tagged JPEG is not turned by the processor on either (that is the reader's job)."""
    from hspnet.utils.images import open_image
    from tests.helpers import write_exif_jpeg, write_float_tiff, write_png_16bit

    upright = write_exif_jpeg(tmp_path / "exif.jpg")
    write_png_16bit(tmp_path / "wide.png")
    write_float_tiff(tmp_path / "float.tif")
    make_image(333, 501, seed=1).save(tmp_path / "photo.jpg", quality=90)
    read = [open_image(tmp_path / name) for name in ("exif.jpg", "wide.png", "float.tif", "photo.jpg")]
    assert read[0].size == upright.size
    fast, slow = _both_paths(processor_class, read, size=32)
    assert np.array_equal(fast["pixel_values"], slow["pixel_values"])
    with Image.open(tmp_path / "exif.jpg") as raw:
        raw.load()
        fast, slow = _both_paths(processor_class, [raw], size=32)
        assert np.array_equal(fast["pixel_values"], slow["pixel_values"])
        assert raw.size != upright.size  # orientation 6: the stored image is the turned one
