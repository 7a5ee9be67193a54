"""Decode one image file to RGB, turning a missing or corrupt file into an ``InputError``."""

from __future__ import annotations

from pathlib import Path

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
            return img.convert("RGB")
    except Image.DecompressionBombError as err:
        raise InputError(f"image {path} is too large to decode ({err})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        # PIL raises UnidentifiedImageError (an OSError) for non-images, OSError for truncation and
        # SyntaxError/ValueError from some plugins on malformed headers.
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"image {path} is corrupt or unreadable ({reason})") from None
