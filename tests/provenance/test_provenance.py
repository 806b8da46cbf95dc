"""Provenance: a C2PA manifest signed with a certificate made here, and the invisible watermark, end to end."""

from __future__ import annotations

import datetime
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pixelmill.api.app import create_app
from pixelmill.files.provenance import ProvenanceConfigError, read_watermark
from tests.conftest import FakeBackend, create_key, wait_for

c2pa = pytest.importorskip("c2pa", reason="c2pa-python (pixelmill[provenance]) is part of the test install")
x509 = pytest.importorskip("cryptography.x509")


def make_chain(tmp_path):
    """A test CA and an ES256 signing certificate it issued; returns (chain path, key path, CA PEM)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Studio")])

    now = datetime.datetime.now(datetime.timezone.utc)
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("Example Root")).issuer_name(name("Example Root")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(name("Example Studio images")).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain, private = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    private.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return chain, private, ca.public_bytes(pem).decode()


def generate(make_runtime, sqlite_url, fmt="png", size=512, **settings) -> bytes:
    rt = make_runtime(sqlite_url, **settings)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    sub = client.post("/v1/flux-dev", json={"prompt": "a red circle", "width": size, "height": size, "output_format": fmt, "seed": 3}).json()
    body = wait_for(lambda: (b := client.get(sub["polling_url"]).json())["status"] != "Pending" and b, 30)
    assert body["status"] == "Ready", body
    return client.get(body["result"]["sample"]).content


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_outputs_carry_a_c2pa_manifest_signed_by_the_operator(make_runtime, sqlite_url, tmp_path, fmt):
    chain, key, _ = make_chain(tmp_path)
    data = generate(make_runtime, sqlite_url, fmt, size=256, c2pa_sign_cert_path=chain, c2pa_private_key_path=key)

    mime = "image/png" if fmt == "png" else "image/jpeg"
    with c2pa.Reader(mime, io.BytesIO(data)) as reader:
        assert reader.get_validation_state() in ("Valid", "Trusted")
        manifest = reader.get_active_manifest()
        codes = [s["code"] for s in json.loads(reader.json()).get("validation_status") or []]
    assert not [c for c in codes if "mismatch" in c or "invalid" in c.lower()], codes
    assert manifest["signature_info"]["common_name"] == "Example Studio images"
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    assert actions[0]["action"] == "c2pa.created"
    assert actions[0]["digitalSourceType"].endswith("trainedAlgorithmicMedia")
    assert actions[0]["parameters"]["model"] == "fake"
    assert Image.open(io.BytesIO(data)).size == (256, 256)  # still an ordinary image

    # a changed pixel breaks what the manifest signs
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0xFF
    try:
        with c2pa.Reader(mime, io.BytesIO(bytes(tampered))) as reader:
            assert reader.get_validation_state() == "Invalid"
    except c2pa.C2paError:
        pass  # the manifest itself was hit: unreadable is as good as invalid


def test_without_configuration_nothing_is_signed(make_runtime, sqlite_url):
    data = generate(make_runtime, sqlite_url, size=256)
    with pytest.raises(c2pa.C2paError):
        with c2pa.Reader("image/png", io.BytesIO(data)) as reader:
            reader.get_active_manifest()


def test_invisible_watermark_is_recovered_from_the_stored_image(make_runtime, sqlite_url):
    pytest.importorskip("imwatermark")
    data = generate(make_runtime, sqlite_url, "png", size=512, watermark_text="pixelmill")
    assert read_watermark(Image.open(io.BytesIO(data)), len("pixelmill")) == b"pixelmill"
    plain = generate(make_runtime, sqlite_url, "png", size=512)
    assert read_watermark(Image.open(io.BytesIO(plain)), len("pixelmill")) != b"pixelmill"


def test_half_a_signing_configuration_stops_the_start(make_runtime, sqlite_url, tmp_path):
    chain, _, _ = make_chain(tmp_path)
    with pytest.raises(ProvenanceConfigError, match="both"):
        make_runtime(sqlite_url, c2pa_sign_cert_path=chain)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ProvenanceConfigError):
        make_runtime(sqlite_url, c2pa_sign_cert_path=chain, c2pa_private_key_path=bad)
