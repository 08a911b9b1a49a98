"""Small JPEGs of machine images, made once per frame.

The ingest pipeline already holds every decoded machine image, so a thumbnail costs a resize
and a JPEG encode there (about a millisecond) instead of a second base-layer decode when a
person browses the frames. The web console shows them in pages of frames (``ListFrames`` with
``include_thumbnails``: one call per page) and draws the detections over them itself.

Cost: on machine images of the shared 768×576 clip (shipped base, 9.6 KB per base layer), a
256-px thumbnail at quality 70 is about 7 KB, so it adds ~70 % to what the database keeps per
frame; ``icm cloud --thumbnail-width 0`` keeps none (then each is made when first asked for).
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["THUMBNAIL_WIDTH", "jpeg_thumbnail"]

THUMBNAIL_WIDTH = 256   # pixels: a grid cell in the console


def jpeg_thumbnail(image: np.ndarray, width: int = THUMBNAIL_WIDTH, quality: int = 70) -> bytes:
    """JPEG of an HxWx3 uint8 RGB image scaled to ``width`` (never up)."""
    from PIL import Image

    im = Image.fromarray(image)
    if im.width > width:
        im = im.resize((width, max(1, round(im.height * width / im.width))),
                       Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()
