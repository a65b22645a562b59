"""Image preprocessing the published metrics use, in torch and PIL (torchvision does not
import beside the CPU torch build here, so its transforms are re-stated, not imported).

Each function says which original transform it follows; they differ only in how the image
reaches the model's square input (crop the shorter side, or pad the longer one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# CLIP's (OpenAI's) normalisation, used by ImageReward, HPSv2 and the CLIP processors alike.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def load_rgb(image: Any):
    """A PIL image in RGB from a PIL image or a path."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image.convert("RGB")


def to_tensor(image):
    """PIL RGB -> float32 (3, H, W) in [0, 1], as torchvision's ToTensor."""
    import numpy as np
    import torch

    array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def normalize(tensor, mean=OPENAI_MEAN, std=OPENAI_STD):
    import torch

    m = torch.tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return (tensor - m) / s


def resize_shorter_center_crop(image, size: int):
    """torchvision ``Resize(size, BICUBIC)`` then ``CenterCrop(size)`` on a PIL image
    (ImageReward's and CLIP's own evaluation transform): the shorter side becomes `size`,
    the longer ``int(size * long / short)``; the crop offset rounds half to even as there."""
    from PIL import Image

    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def resize_longest_pad(tensor, size: int, fill: float = 0.0):
    """HPSv2's evaluation transform (open_clip ``ResizeMaxSize``, chosen by its
    ``light_augmentation=True``) on a (3, H, W) tensor in [0, 1]: the longer side becomes
    `size` (bicubic, antialiased as torchvision >= 0.17 does on tensors), then the image is
    padded with `fill` to a centred square; a square image is only resized."""
    import torch.nn.functional as F

    _, h, w = tensor.shape
    scale = size / float(max(h, w))
    if scale == 1.0:
        return tensor
    new_h, new_w = round(h * scale), round(w * scale)
    out = F.interpolate(tensor[None], size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)[0]
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        out = F.pad(out, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
    return out
