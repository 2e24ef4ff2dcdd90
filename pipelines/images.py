"""Image sizes from headers only: formats with normalized coordinates need them."""

from __future__ import annotations

from pipelines.storage import Source

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_size(source: Source, member: str) -> tuple[int, int] | None:
    """(width, height) read from the image header (PIL opens lazily: no pixel decode).

    None when the file is missing or not an image; the content decides, not the
    suffix (exports ship PNG data named .jpg).
    """
    from PIL import Image  # ~2 MB, for the readers that look at images alone

    try:
        with source.open(member) as f, Image.open(f) as img:
            return img.size
    except (OSError, ValueError):  # PIL's UnidentifiedImageError is an OSError
        return None
