"""Images in and out of the API.

In: `data:image/...;base64,...` URLs (or uploaded files), refused before decoding when their bytes
or their header's width x height are over the limits (decompression bombs), decoded only then;
http(s) URLs only from allowed domains; every other scheme (file://, ftp://) never.
Out: PNG, as base64 or as a data URL."""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings

from PIL import Image, UnidentifiedImageError

from ..data.images import to_rgb
from .errors import APIError
from .limits import Limits

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
KEEP_SIDE = 1024  # decoded images are kept at most this large  # what Pillow may open: no exotic decoders on user bytes
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.ASCII)


def decode_image_bytes(data: bytes, limits: Limits, param: str) -> Image.Image:
    """Bytes of an image file -> RGB image; sizes checked before the pixels are decoded."""
    if len(data) > limits.max_image_bytes:
        raise APIError(413, f"{param}: the image is {len(data)} bytes, over the limit of {limits.max_image_bytes}",
                       param, "image_too_large")
    if not data:
        raise APIError(422, f"{param}: the image is empty", param, "invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise APIError(413, f"{param}: the image is {width}x{height}, over the limit of "
                               f"{limits.max_image_pixels} pixels; downscale it", param, "image_too_large")
            if width < 1 or height < 1:
                raise APIError(422, f"{param}: the image has no pixels", param, "invalid_image")
            image.load()
            image = to_rgb(image)
    except APIError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise APIError(413, f"{param}: the image is too large to decode", param, "image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError,
            MemoryError) as err:
        raise APIError(422, f"{param}: not a readable PNG, JPEG, WebP, GIF or BMP image "
                       f"({type(err).__name__}: truncated or not an image)", param, "invalid_image") from None
    # The vision tower reads 384 px at most and the decoder draws 512 px: a larger image only holds
    # memory while it waits in the queue.
    if max(image.size) > KEEP_SIDE:
        image.thumbnail((KEEP_SIDE, KEEP_SIDE), Image.BICUBIC)
    return image


def decode_data_url(url: str, limits: Limits, param: str) -> Image.Image:
    match = _DATA_URL.match(url)
    if not match or not match.group("b64"):
        raise APIError(400, f"{param}: a data URL must look like data:image/png;base64,<base64 bytes>", param,
                       "invalid_image_url")
    mime = (match.group("mime") or "").lower()
    if not mime.startswith("image/"):
        raise APIError(422, f"{param}: the data URL holds {mime or 'no media type'}, not an image", param,
                       "invalid_image")
    payload = url[match.end():]
    # The decoded size is known from the base64 length: refuse before decoding anything.
    if len(payload) * 3 // 4 > limits.max_image_bytes + 3:
        raise APIError(413, f"{param}: the image is about {len(payload) * 3 // 4} bytes, over the limit of "
                       f"{limits.max_image_bytes}", param, "image_too_large")
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(422, f"{param}: the data URL's base64 is malformed or truncated", param,
                       "invalid_image") from None
    return decode_image_bytes(data, limits, param)


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d.lower().rstrip(".") or host.endswith("." + d.lower().rstrip(".")) for d in allowed)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect could lead to any host: not followed
        return None


def fetch_url(url: str, limits: Limits, param: str, timeout: float = 10.0) -> Image.Image:
    """An http(s) image from an allowed domain, read up to the byte limit."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise APIError(400, f"{param}: only data: URLs are accepted (or http(s) from allowed domains)", param,
                       "invalid_image_url")
    if not host_allowed(parts.hostname, limits.allowed_domains):
        raise APIError(400, f"{param}: remote image URLs are not fetched by this server (host "
                       f"{parts.hostname!r} is not allowed); send the image inline as a data: URL", param,
                       "remote_url_not_allowed")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "genllava-serve"}), timeout=timeout) as r:
            if r.status != 200:
                raise APIError(400, f"{param}: fetching the image gave HTTP {r.status}", param, "image_fetch_failed")
            data = r.read(limits.max_image_bytes + 1)
    except APIError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise APIError(400, f"{param}: the image could not be fetched ({type(err).__name__})", param,
                       "image_fetch_failed") from None
    return decode_image_bytes(data, limits, param)


def load_image_url(url: str, limits: Limits, param: str) -> Image.Image:
    if not isinstance(url, str) or not url:
        raise APIError(400, f"{param}: give the image as a data: URL", param, "invalid_image_url")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return decode_data_url(url, limits, param)
    if scheme in ("http", "https"):
        return fetch_url(url, limits, param)
    raise APIError(400, f"{param}: {scheme or 'a relative'} URLs are not accepted; send the image as a "
                   "data:image/...;base64 URL", param, "invalid_image_url")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_b64_png(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def to_data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + to_b64_png(image)
