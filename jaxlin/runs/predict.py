"""Classifying image files with saved params: `jaxlin predict PARAMS IMAGE...`.

Each file is made into an image of the shape the params were trained on (H, W, C, stored in the
params file; MNIST's 28x28 for files from before other data sets). A gray image (C = 1) is made
the way MNIST itself was: grayscale, white on black (inverted when the background is light),
cropped to the mark, scaled to fit a box of 20/28 of the image with its aspect ratio kept, and
placed with its centre of mass at the centre (for 28x28: a 20x20 box, the centre at (14, 14)).
A colour image (C = 3) is resized to W x H as it is, RGB. Other channel counts cannot be made from
an image file, and are refused in one line.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from jaxlin.errors import JaxlinError
from jaxlin.data.datasets import IMAGE_SHAPE
from jaxlin.data.files import NotARegularFile, open_regular

BOX = 20  # MNIST's digits fit a 20x20 box inside the 28x28 image
_INK_THRESHOLD = 0.2  # of the brightest pixel: what counts as part of the digit when cropping
MIN_DIGIT_PIXELS = 3  # a speck is not a digit
CHANNELS = (1, 3)  # what an image file can be made into: gray or RGB


class ImageError(JaxlinError, ValueError):
    """A file that is not an image jaxlin can classify."""


@dataclasses.dataclass
class Prediction:
    path: str
    label: int | None = None
    probabilities: list[float] | None = None
    error: str | None = None

    def top(self, k: int) -> list[tuple[int, float]]:
        # Highest first, ties in class order: the first is always the label (`np.argmax` takes the lowest
        # class on a tie; a reversed ascending sort would list the highest tied class first).
        order = np.argsort(-np.asarray(self.probabilities), kind="stable")[:k]
        return [(int(c), float(self.probabilities[c])) for c in order]


def _open_image(path: str | Path):
    """The image file opened for reading; a FIFO or device is refused without waiting (`files`)."""
    try:
        return open_regular(path)
    except FileNotFoundError as err:
        raise ImageError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise ImageError(f"{path}: is a directory") from err
    except NotARegularFile as err:
        raise ImageError(f"{path}: not a regular file") from err
    except OSError as err:
        raise ImageError(f"{path}: cannot read it ({err.strerror or err})") from err


def load_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """The image as float32 levels in [0, 255]: gray (H, W) for `channels` 1, RGB (H, W, 3) for 3;
    transparency over white, 16-bit scaled."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    with _open_image(path) as handle:
        try:
            with warnings.catch_warnings():
                # Pillow only warns between its two size limits; such an image costs gigabytes.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(handle) as image:
                    image.load()
                    return _gray_levels(image) if channels == 1 else _rgb_levels(image)
        except ImageError as err:
            raise ImageError(f"{path}: {err}") from err
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise ImageError(f"{path}: the image is too large to read ({err})") from err
        except UnidentifiedImageError as err:
            raise ImageError(f"{path}: not an image that can be read (Pillow knows no such image format)") from err
        except (OSError, ValueError, EOFError, MemoryError) as err:
            raise ImageError(f"{path}: not an image that can be read ({err})") from err


def _gray_levels(image) -> np.ndarray:
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float: scale, do not clip
        pixels = np.asarray(image, np.float64)
        if not np.all(np.isfinite(pixels)):  # a float image (TIFF) holding NaN or infinity
            raise ImageError("image holds non-finite values")
        low, high = float(pixels.min()), float(pixels.max())
        return (np.zeros_like(pixels) if high == low else (pixels - low) * (255.0 / (high - low))).astype(np.float32)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Strokes drawn on a transparent background: lay them over white.
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return np.asarray(image.convert("L"), np.float32)


def _rgb_levels(image) -> np.ndarray:
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # one 16-bit or float channel: gray in RGB
        return np.repeat(_gray_levels(image)[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), np.float32)


def to_mnist(gray) -> np.ndarray:
    """Gray levels (an array or a grayscale PIL image) as an MNIST image: uint8 (28, 28), white digit
    on black."""
    return to_gray_image(gray, IMAGE_SHAPE)


def to_rgb_image(rgb, shape: tuple[int, int]) -> np.ndarray:
    """RGB levels (H', W', 3) resized to uint8 (H, W, 3) = `shape` + (3,), as they are."""
    from PIL import Image

    pixels = np.asarray(rgb, np.float32)
    if pixels.size == 0:
        raise ImageError("the image is empty")
    if not np.all(np.isfinite(pixels)):
        raise ImageError("image holds non-finite values")
    image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")
    height, width = shape
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), np.uint8)


def to_gray_image(gray, shape: tuple[int, int]) -> np.ndarray:
    """Gray levels as an image of `shape` (H, W) made the MNIST way: uint8, white mark on black,
    scaled into a box of 20/28 of the image and centred by mass."""
    from PIL import Image

    height, width = shape
    box = max(1, round(BOX * min(height, width) / IMAGE_SHAPE[0]))
    pixels = np.asarray(gray, np.float32)
    if pixels.size == 0:
        raise ImageError("the image is empty")
    if not np.all(np.isfinite(pixels)):
        raise ImageError("image holds non-finite values")
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if np.median(border) > 127:  # a dark digit on a light background
        pixels, border = 255.0 - pixels, 255.0 - border
    pixels = np.clip(pixels - np.median(border), 0, None)  # the background to black
    if pixels.max() <= 0:
        raise ImageError("the image is blank: no digit found")
    rows, cols = np.nonzero(pixels > _INK_THRESHOLD * pixels.max())
    if max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 < MIN_DIGIT_PIXELS:
        raise ImageError(f"no digit found: the only marks span fewer than {MIN_DIGIT_PIXELS} pixels")
    crop = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = box / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    glyph = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), np.float32)
    glyph = np.clip(glyph, 0, None)
    glyph *= 255.0 / glyph.max()
    canvas = np.zeros((height, width), np.float32)
    total = glyph.sum()
    centre_row = (np.arange(glyph.shape[0]) @ glyph.sum(axis=1)) / total
    centre_col = (np.arange(glyph.shape[1]) @ glyph.sum(axis=0)) / total
    # MNIST put the centre of mass at pixel (14, 14) of 0..27: the middle.
    top = int(round(height / 2 - centre_row))
    left = int(round(width / 2 - centre_col))
    top = min(max(top, 0), height - glyph.shape[0])
    left = min(max(left, 0), width - glyph.shape[1])
    canvas[top:top + glyph.shape[0], left:left + glyph.shape[1]] = glyph
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def params_image_shape(params_path: str, model) -> tuple[int, int, int]:
    """The (H, W, C) images the params take: as stored in the file, else (an older jaxlin's file) a
    square gray image of the model's inputs. A shape no image file can be made into is refused."""
    from jaxlin.runs import params_file

    shape = params_file.stored_image_shape(params_path)
    if shape is None:
        side = math.isqrt(model.layer_sizes[0])
        if side * side != model.layer_sizes[0]:
            raise params_file.CheckpointError(f"{params_path}: the params take {model.layer_sizes[0]} values per "
                                              f"image and the file does not say their shape; predict cannot make "
                                              f"image files into them")
        shape = (side, side, 1)  # 784: MNIST's 28x28
    if shape[2] not in CHANNELS:
        raise params_file.CheckpointError(f"{params_path}: the params take images of {shape[2]} channels; predict "
                                          f"makes image files into gray (1) or RGB (3) images only")
    return shape


def to_input(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """The image file at `path` as the params' input: uint8, flat (H * W * C,)."""
    height, width, channels = shape
    levels = load_image(path, channels)
    image = to_gray_image(levels, (height, width)) if channels == 1 else to_rgb_image(levels, (height, width))
    return image.reshape(-1)


def predict_files(params_path: str, paths: list[str], top: int | None = None) -> list[Prediction]:
    """One Prediction per path; a file that cannot be read gets an error and the others go on. `top`
    (how many probabilities will be shown) must lie in 1..the params' class count: ConfigError, before
    any image is read."""
    import jax

    from jaxlin.runs import params_file as checkpoint
    from jaxlin.training.evaluate import to_float_images

    params, model = checkpoint.load_params(params_path)
    classes = model.layer_sizes[-1]
    if top is not None and not 1 <= top <= classes:
        from jaxlin.config import ConfigError

        raise ConfigError(f"--top must be in 1..{classes} (the params' {classes} classes), got {top}")
    shape = params_image_shape(params_path, model)
    results, images = [], []
    for path in paths:
        try:
            images.append(to_input(path, shape))
            results.append(Prediction(str(path)))
        except ImageError as err:
            message = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
            results.append(Prediction(str(path), error=message))
    if images:
        probabilities = np.asarray(jax.jit(lambda p, x: jax.nn.softmax(model.apply(p, to_float_images(x))))(
            params, np.stack(images)))
        readable = [r for r in results if r.error is None]
        for result, row in zip(readable, probabilities):
            result.label = int(np.argmax(row))
            result.probabilities = [float(p) for p in row]
    return results
