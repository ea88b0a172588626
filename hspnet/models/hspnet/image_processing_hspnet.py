# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""Image processor for HSPNet: the authors' torchvision preprocessing, reproduced to the pixel.

The authors (and OpenAI CLIP) preprocess every image with

    image = Image.open(path).convert("RGB")
    Compose([Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224), ToTensor(),
             Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])

transformers' `CLIPImageProcessor(Pil)` is close but not identical: its centre crop rounds the crop offset *down*
(`(h - size) // 2`), while torchvision's `CenterCrop` takes `int(round((h - size) / 2.0))`. When the margin left
after resizing is odd the two crops are one pixel apart: a 640x427 COCO image becomes 335x224 and torchvision crops
columns 56..279 where HF crops 55..278. It also composites transparent images onto white where `convert("RGB")`
drops the alpha channel. `HSPNetImageProcessor` performs the authors' operations exactly, so a converted or trained
model sees the same pixels as in the authors' code, for every image size.

This file is saved next to the weights as remote code (`AutoImageProcessor.from_pretrained(folder,
trust_remote_code=True)`), so it imports only numpy, PIL and transformers, and nothing from the `hspnet` package.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_transforms import resize as pil_resize
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack


def get_resize_output_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """`(new_height, new_width)` of torchvision's `Resize(shortest_edge)`: the shorter side becomes `shortest_edge`,
    the longer one `int(shortest_edge * long / short)` (truncated, computed in floating point exactly as torchvision's
    `_compute_resized_output_size`). A square image stays square."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def get_center_crop_offsets(height: int, width: int, crop_height: int, crop_width: int) -> tuple[int, int]:
    """`(top, left)` of torchvision's `CenterCrop`: `int(round((height - crop_height) / 2.0))` and likewise for the
    width. Python's `round` rounds halves to the nearest even integer, so a margin of 1 gives offset 0, 3 gives 2,
    111 gives 56 (HF's `(height - crop_height) // 2` gives 55)."""
    return int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))


def _crop_size_for(size: Any) -> Any:
    """The crop that goes with a resize `size` when only `size` is given: the authors use the same number for both
    (`Resize(n)` then `CenterCrop(n)`)."""
    if isinstance(size, int):
        return size
    if isinstance(size, (list, tuple)):
        return size[0] if len(size) == 1 else list(size)
    if isinstance(size, (dict, SizeDict)):
        size = dict(size)
        if size.get("shortest_edge"):
            return size["shortest_edge"]
        if size.get("height") and size.get("width"):
            return {"height": size["height"], "width": size["width"]}
    return None


class HSPNetImageProcessor(PilBackend):
    r"""
    The authors' preprocessing, operation by operation (each one can be switched off like in other HF processors):

    1. `do_convert_rgb`: PIL images go through `image.convert("RGB")`, as the authors' loader does (greyscale
       repeated, palette and CMYK converted by PIL, alpha dropped, not composited onto white). Arrays and tensors
       (`(H, W, C)`, `(C, H, W)` or `(H, W)`) are taken as RGB pixels; one channel is repeated to three and a fourth
       (alpha) channel is dropped, which is what `convert("RGB")` does to "L" and "RGBA" pixels.
    2. `do_resize`: torchvision's `Resize(size["shortest_edge"], InterpolationMode.BICUBIC)` on a PIL image: the
       shorter side becomes `shortest_edge` and the longer one `int(shortest_edge * long / short)`
       (`get_resize_output_size`), resampled by PIL's `Image.resize(..., resample)` (bicubic by default), which is
       what torchvision calls for PIL images. An image already at that size is left untouched, as torchvision does.
       `size={"height": h, "width": w}` resizes to exactly `(h, w)` like `Resize((h, w))`.
    3. `do_center_crop`: torchvision's `CenterCrop(crop_size)`: a side shorter than the crop is first padded with
       zeros, `(crop - side) // 2` before and `(crop - side + 1) // 2` after; then the crop starts at
       `int(round((side - crop) / 2.0))` (`get_center_crop_offsets`; Python rounds halves to even).
    4. `do_rescale`: `ToTensor`: float32, divided by `1 / rescale_factor` (255).
    5. `do_normalize`: `Normalize(image_mean, image_std)`: `(x - mean) / std` per channel in float32 (CLIP's mean and
       std by default).

    Steps 4 and 5 are the same float32 operations as torchvision's, so `pixel_values` are bit-identical to the
    authors' tensors for PIL inputs. Arrays that are not uint8 are resized through PIL like HF's PIL backend does.

    Speed (`fast_pil_path`, on by default; the same pixels, bit for bit): an RGB PIL image is resized and cropped as
    a PIL image (no array round trip of the full-size image: HF's backend turns it into an array, back into a PIL
    image to resize, and into an array again), and steps 4-5 run once on the whole batch of uint8 crops (one float32
    pass, in place) instead of image by image. Set `processor.fast_pil_path = False` for the per-image path.

    Args:
        size (`int` or `dict[str, int]`, *optional*, defaults to `{"shortest_edge": 224}`):
            Resize target; an int `n` means `{"shortest_edge": n}` (the model's resolution, `config.image_size`).
        crop_size (`int` or `dict[str, int]`, *optional*):
            Centre crop; defaults to the `size` given (`n` -> `{"height": n, "width": n}`), else 224x224.
        resample (`PILImageResampling`, *optional*, defaults to `BICUBIC`), image_mean, image_std,
        rescale_factor (defaults to `1 / 255`), and the `do_*` flags: as in other HF image processors.

    Returns from `__call__` / `preprocess`: a `BatchFeature` whose `pixel_values` are `(B, 3, crop_h, crop_w)` float32
    (a torch tensor with `return_tensors="pt"`, an array with `"np"`, a list of `(3, crop_h, crop_w)` arrays without).
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 224}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    # not a saved setting (a class attribute): the batched path for PIL images, bit-identical to the per-image one
    fast_pil_path = True

    def __init__(self, **kwargs: Unpack[ImagesKwargs]):
        if kwargs.get("size") is not None and kwargs.get("crop_size") is None:
            crop_size = _crop_size_for(kwargs["size"])
            if crop_size is not None:
                kwargs["crop_size"] = crop_size
        super().__init__(**kwargs)

    def process_image(
        self,
        image: ImageInput,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> np.ndarray:
        """One PIL image, array or tensor -> a `(C, H, W)` array (uint8 for PIL images), RGB when `do_convert_rgb`;
        with `fast_pil_path`, an RGB PIL image stays one (`_preprocess` resizes and crops it as such)."""
        if do_convert_rgb and isinstance(image, PIL.Image.Image) and image.mode != "RGB":
            image = image.convert("RGB")
        if self.fast_pil_path and isinstance(image, PIL.Image.Image) and image.mode == "RGB":
            return image  # resized and cropped as a PIL image by `_preprocess` (`_resize_and_crop_pil`)
        image = super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format)
        if do_convert_rgb and image.shape[0] == 1:
            image = np.repeat(image, 3, axis=0)
        elif do_convert_rgb and image.shape[0] == 4:
            image = image[:3]
        return image

    @staticmethod
    def _resized_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
        if size.shortest_edge:
            return get_resize_output_size(height, width, size.shortest_edge)
        if size.height and size.width:
            return size.height, size.width
        raise ValueError(f"`size` must have a 'shortest_edge' key or 'height' and 'width' keys, got {size}.")

    def resize(
        self,
        image: np.ndarray,
        size: SizeDict,
        resample: PILImageResampling | int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """`(C, H, W)` -> `(C, new_H, new_W)`: torchvision's `Resize` on a PIL image (see `get_resize_output_size`)."""
        height, width = image.shape[-2:]
        new_size = self._resized_size(height, width, size)
        if new_size == (height, width):
            return image
        return pil_resize(
            image,
            size=new_size,
            resample=PILImageResampling.BICUBIC if resample is None else resample,
            data_format=ChannelDimension.FIRST,
            input_data_format=ChannelDimension.FIRST,
        )

    def center_crop(self, image: np.ndarray, size: SizeDict, **kwargs) -> np.ndarray:
        """`(C, H, W)` -> `(C, crop_h, crop_w)`: torchvision's `CenterCrop` (zero padding of short sides, rounded
        offsets; see `get_center_crop_offsets`)."""
        if size.height is None or size.width is None:
            raise ValueError(f"`crop_size` must have 'height' and 'width' keys, got {size}.")
        crop_height, crop_width = size.height, size.width
        height, width = image.shape[-2:]
        if crop_height > height or crop_width > width:
            pad_height, pad_width = max(crop_height - height, 0), max(crop_width - width, 0)
            padding = ((0, 0), (pad_height // 2, (pad_height + 1) // 2), (pad_width // 2, (pad_width + 1) // 2))
            image = np.pad(image, padding, mode="constant", constant_values=0)
            height, width = image.shape[-2:]
        top, left = get_center_crop_offsets(height, width, crop_height, crop_width)
        return image[:, top : top + crop_height, left : left + crop_width]

    def _resize_and_crop_pil(self, image: PIL.Image.Image, do_resize: bool, size: SizeDict,
                             resample: PILImageResampling | int | None, do_center_crop: bool,
                             crop_size: SizeDict) -> np.ndarray:
        """Steps 2-3 on an RGB PIL image -> `(3, H, W)` uint8 (a view of an `(H, W, 3)` array): what `resize` and
        `center_crop` do to its array, without converting the full-size image to an array and back."""
        width, height = image.size
        if do_resize:
            new_height, new_width = self._resized_size(height, width, size)
            if (new_height, new_width) != (height, width):
                image = image.resize((new_width, new_height),
                                     resample=PILImageResampling.BICUBIC if resample is None else resample)
                height, width = new_height, new_width
        if do_center_crop and crop_size.height is not None and crop_size.width is not None and (
                crop_size.height <= height and crop_size.width <= width):
            top, left = get_center_crop_offsets(height, width, crop_size.height, crop_size.width)
            image = image.crop((left, top, left + crop_size.width, top + crop_size.height))
            do_center_crop = False
        pixels = np.asarray(image).transpose(2, 0, 1)
        return self.center_crop(pixels, crop_size) if do_center_crop else pixels  # zero padding, or its error

    def _rescale_and_normalize_batch(self, batch: np.ndarray, do_rescale: bool, rescale_factor: float,
                                     do_normalize: bool, image_mean, image_std) -> np.ndarray:
        """Steps 4-5 on `(B, C, H, W)` uint8 at once: the same float32 operations as `rescale` and `normalize`,
        element by element (so the same bits), in place on one float32 array."""
        values = batch.astype(np.float32)
        if do_rescale:
            values /= np.float32(1.0 / rescale_factor)
        if do_normalize:
            values -= np.asarray(image_mean, dtype=np.float32).reshape(1, -1, 1, 1)
            values /= np.asarray(image_std, dtype=np.float32).reshape(1, -1, 1, 1)
        return values

    def rescale(self, image: np.ndarray, scale: float, **kwargs) -> np.ndarray:
        """`ToTensor`'s scaling: float32 divided by `1 / scale` (255 for the default `1 / 255`)."""
        return image.astype(np.float32) / np.float32(1.0 / scale)

    def normalize(self, image: np.ndarray, mean: float | tuple[float, ...], std: float | tuple[float, ...],
                  **kwargs) -> np.ndarray:
        """`Normalize(mean, std)`: `(image - mean) / std` per channel, in float32 like torchvision."""
        image = image.astype(np.float32, copy=False)
        mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        return (image - mean) / std

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int | None,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
        do_pad: bool | None = None,
        pad_size: SizeDict | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """`(C, H, W)` arrays (and RGB PIL images, `process_image`) -> `BatchFeature(pixel_values)`, in the authors'
        order: steps 2-3 image by image, steps 4-5 on the whole batch when its crops are alike uint8 arrays."""
        processed = []
        for image in images:
            if isinstance(image, PIL.Image.Image):
                processed.append(self._resize_and_crop_pil(image, do_resize, size, resample, do_center_crop,
                                                           crop_size))
                continue
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            if do_center_crop:
                image = self.center_crop(image, crop_size)
            processed.append(image)
        alike = len({(image.shape, image.dtype) for image in processed}) == 1 and processed[0].dtype == np.uint8
        if self.fast_pil_path and alike and not do_pad:
            batch = np.stack(processed)  # (B, C, H, W) uint8
            if do_rescale or do_normalize:
                batch = self._rescale_and_normalize_batch(batch, do_rescale, rescale_factor, do_normalize,
                                                          image_mean, image_std)
            return BatchFeature(data={"pixel_values": batch if return_tensors else list(batch)},
                                tensor_type=return_tensors)
        for index, image in enumerate(processed):
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed[index] = np.ascontiguousarray(image)
        if do_pad:
            processed = self.pad(processed, pad_size=pad_size)
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)


# Saving writes `auto_map: {"AutoImageProcessor": "image_processing_hspnet.HSPNetImageProcessor"}` into
# preprocessor_config.json and copies this file beside it (this only sets a class attribute).
HSPNetImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["HSPNetImageProcessor", "get_center_crop_offsets", "get_resize_output_size"]
