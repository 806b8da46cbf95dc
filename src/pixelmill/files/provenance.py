"""Provenance of stored outputs: a signed C2PA manifest and an invisible watermark, each on by configuration.

* **C2PA** (``c2pa_sign_cert_path`` + ``c2pa_private_key_path``): every stored
  image carries a Content Credentials manifest signed with the operator's
  certificate chain (PEM, leaf first) and key, through ``c2pa-python``.  It
  says the image was made by an algorithm (IPTC ``trainedAlgorithmicMedia``)
  with which model, or edited by which node; readers such as
  ``c2pa.Reader`` or contentcredentials.org verify it, and any change to the
  pixels breaks the hash it signs.
* **Watermark** (``watermark_text``, up to 16 bytes): an invisible DWT-DCT mark
  through ``invisible-watermark`` (the method Stable Diffusion's reference
  scripts use), applied before encoding; :func:`read_watermark` recovers it.

Both libraries are optional (``pip install pixelmill[provenance]``): a setting
that needs one that is missing stops the server at start with a clear message.
"""

from __future__ import annotations

import importlib.util
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pixelmill.models.imageops import FILE_EXTENSIONS, MIME_TYPES, encode_image

GENERATED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
WATERMARK_MAX_BYTES = 16


class ProvenanceConfigError(ValueError):
    pass


@dataclass
class C2paSigner:
    """Signs encoded images with the operator's certificate chain and key."""

    chain_pem: bytes
    key_pem: bytes
    alg: str = "es256"
    tsa_url: str | None = None
    product: str = "pixelmill"
    version: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._signer = None

    @classmethod
    def from_files(cls, cert: Path, key: Path, alg: str = "es256", tsa_url: str | None = None) -> "C2paSigner":
        if importlib.util.find_spec("c2pa") is None:
            raise ProvenanceConfigError("c2pa signing is configured but c2pa-python is not installed: pip install 'pixelmill[provenance]'")
        try:
            chain, private = Path(cert).read_bytes(), Path(key).read_bytes()
        except OSError as exc:
            raise ProvenanceConfigError(f"c2pa certificate or key unreadable: {exc}") from None
        from pixelmill import __version__

        signer = cls(chain, private, alg, tsa_url, version=__version__)
        signer._get()  # a bad certificate or key stops the start, not the first image
        return signer

    def _get(self):
        import c2pa

        with self._lock:
            if self._signer is None:
                try:
                    info = c2pa.C2paSignerInfo(self.alg.encode(), self.chain_pem, self.key_pem, self.tsa_url.encode() if self.tsa_url else None)
                    self._signer = c2pa.Signer.from_info(info)
                except Exception as exc:
                    raise ProvenanceConfigError(f"c2pa signer could not be made from the certificate and key: {exc}") from None
            return self._signer

    def manifest(self, fmt: str, metadata: dict) -> dict:
        model = metadata.get("model")
        if model:
            action = {"action": "c2pa.created", "digitalSourceType": GENERATED, "parameters": {"model": model}}
        else:
            action = {"action": "c2pa.edited", "parameters": {k: metadata[k] for k in ("node",) if k in metadata}}
        action["softwareAgent"] = {"name": self.product, "version": self.version}
        return {
            "claim_generator_info": [{"name": self.product, "version": self.version}],
            "format": MIME_TYPES[fmt],
            "title": f"image.{FILE_EXTENSIONS[fmt]}",
            "assertions": [{"label": "c2pa.actions", "data": {"actions": [action]}}],
        }

    def sign(self, data: bytes, fmt: str, metadata: dict) -> bytes:
        import c2pa

        signer = self._get()
        out = io.BytesIO()
        with self._lock, c2pa.Builder(self.manifest(fmt, metadata)) as builder:
            builder.sign(signer, MIME_TYPES[fmt], io.BytesIO(data), out)
        return out.getvalue()


@dataclass
class Watermarker:
    payload: bytes

    @classmethod
    def for_text(cls, text: str) -> "Watermarker":
        if importlib.util.find_spec("imwatermark") is None:
            raise ProvenanceConfigError("watermark_text is set but invisible-watermark is not installed: pip install 'pixelmill[provenance]'")
        payload = text.encode()
        if not 0 < len(payload) <= WATERMARK_MAX_BYTES:
            raise ProvenanceConfigError(f"watermark_text must be 1-{WATERMARK_MAX_BYTES} bytes of UTF-8")
        return cls(payload)

    def apply(self, image: Image.Image) -> Image.Image:
        from imwatermark import WatermarkEncoder

        if min(image.size) < 256:  # DWT-DCT needs room: small images are left unmarked
            return image
        encoder = WatermarkEncoder()
        encoder.set_watermark("bytes", self.payload)
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
        marked = Image.fromarray(np.ascontiguousarray(encoder.encode(bgr, "dwtDct")[..., ::-1]))
        if alpha is not None:
            marked.putalpha(alpha)
        return marked


def read_watermark(image: Image.Image, length: int) -> bytes:
    """The ``length``-byte watermark in ``image`` (noise when there is none)."""
    from imwatermark import WatermarkDecoder

    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
    return bytes(WatermarkDecoder("bytes", length * 8).decode(bgr, "dwtDct"))


@dataclass
class Provenance:
    """What the runner calls to turn an output image into the bytes it stores."""

    signer: C2paSigner | None = None
    watermark: Watermarker | None = None
    png_compress_level: int = 1

    @classmethod
    def from_settings(cls, settings) -> "Provenance":
        signer = None
        cert, key = getattr(settings, "c2pa_sign_cert_path", None), getattr(settings, "c2pa_private_key_path", None)
        if bool(cert) != bool(key):
            raise ProvenanceConfigError("c2pa signing needs both c2pa_sign_cert_path and c2pa_private_key_path")
        if cert and key:
            signer = C2paSigner.from_files(cert, key, getattr(settings, "c2pa_alg", "es256"), getattr(settings, "c2pa_tsa_url", None))
        text = getattr(settings, "watermark_text", None)
        return cls(signer, Watermarker.for_text(text) if text else None, getattr(settings, "png_compress_level", 1))

    def encode(self, image: Image.Image, fmt: str, metadata: dict, quality: int = 92, node: str | None = None) -> bytes:
        if self.watermark is not None:
            image = self.watermark.apply(image)
        data = encode_image(image, fmt, quality=quality, metadata=metadata, png_compress_level=self.png_compress_level)
        if self.signer is not None:
            data = self.signer.sign(data, fmt, {**metadata, "node": node} if node else metadata)
        return data
