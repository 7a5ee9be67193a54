"""Decode one image file to RGB, turning a missing or corrupt file into an ``InputError``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.errors import InputError


def load_image(path: Path) -> Image.Image:
    """Fully decode ``path`` as an RGB image.

    ``img.load()`` forces the whole decode here, so a truncated file fails now, naming the file,
    rather than later inside a transform or a DataLoader worker.

    Raises:
        InputError: the file is missing, not an image, truncated or otherwise unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except InputError as err:
        raise InputError(f"image {path}: {err}") from None
    except Image.DecompressionBombError as err:
        raise InputError(f"image {path} is too large to decode ({err})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        # PIL raises UnidentifiedImageError (an OSError) for non-images, OSError for truncation and
        # SyntaxError/ValueError from some plugins on malformed headers.
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"image {path} is corrupt or unreadable ({reason})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``img``, keeping the tones of 16-bit and 32-bit grey images.

    PIL's ``convert("RGB")`` clips integer greys to 0..255, so a 16-bit image (mode ``I;16``, or ``I``
    as PNG decodes it) would come out almost white; here 0..65535 maps linearly to 0..255. A float
    image (mode ``F``) must hold values in [0, 1].

    Raises:
        InputError: an integer image with values outside 0..65535, or a float image outside [0, 1].
    """
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img, dtype=np.int64)  # (H, W)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"{img.mode} pixel values outside 0..65535 ({values.min()}..{values.max()})")
        grey = np.round(values / 257.0).astype(np.uint8)  # 65535 / 257 = 255
        return Image.fromarray(grey).convert("RGB")  # (H, W) uint8: mode L
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise InputError("float (mode F) pixel values outside [0, 1]")
        return Image.fromarray(np.round(values * 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")
