"""The model catalog: loading TOML, validation errors, lookups and prices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixelmill.models.catalog import WEIGHTS_DIR, CatalogError, ModelCatalog, ModelSpec

BFL_ENDPOINTS = [
    "flux-dev",
    "flux-pro",
    "flux-pro-1.1",
    "flux-pro-1.1-ultra",
    "flux-2-klein-4b",
    "flux-2-pro",
    "flux-schnell",
]


def write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "catalog.toml"
    file.write_text(text)
    return file


def test_default_catalog_serves_every_bfl_endpoint_with_the_tiny_model():
    catalog = ModelCatalog.load()
    assert catalog.names() == ["pixelmill-tiny"]
    spec = catalog.get("pixelmill-tiny")
    assert spec.backend == "diffusers"
    assert spec.resolved_path() == str(WEIGHTS_DIR / "pixelmill-tiny")
    for endpoint in BFL_ENDPOINTS:
        assert catalog.for_bfl_endpoint(endpoint) is spec
    assert catalog.for_bfl_endpoint("no-such-endpoint") is None
    assert spec.price_per_megapixel == 1.0


def test_price_is_per_output_megapixel_rounded_up_to_cents():
    spec = ModelSpec(name="m", path="/x", price_per_megapixel=1.0)
    assert spec.price(1000, 1000) == 1.0
    assert spec.price(1000, 1000, num_images=3) == 3.0
    assert spec.price(1024, 768) == 0.79  # 0.786432 MP, rounded up
    assert spec.price(10, 10) == 0.01  # never free
    assert ModelSpec(name="m", path="/x", price_per_megapixel=2.5).price(1024, 1024) == 2.63
    assert ModelSpec(name="m", path="/x", price_per_megapixel=0).price(1024, 1024) == 0.0
    with pytest.raises(ValueError):
        spec.price(0, 10)


def test_get_unknown_model_names_the_known_ones():
    catalog = ModelCatalog.load()
    with pytest.raises(KeyError, match="unknown model 'nope'.*pixelmill-tiny"):
        catalog.get("nope")
    assert "pixelmill-tiny" in catalog and "nope" not in catalog


def test_operator_catalog_with_paths_repos_and_endpoints(tmp_path):
    file = write(
        tmp_path,
        """
[[models]]
name = "flux-dev"
repo_id = "black-forest-labs/FLUX.1-dev"
dtype = "bfloat16"
price_per_megapixel = 2.5
supports_image_input = true
bfl_endpoints = ["flux-dev", "flux-pro-1.1"]

[[models]]
name = "sd-local"
path = "weights/sd"
default_steps = 20
default_guidance = 7.0
""",
    )
    catalog = ModelCatalog.load(file)
    assert catalog.names() == ["flux-dev", "sd-local"]
    assert catalog.get("flux-dev").resolved_path() == "black-forest-labs/FLUX.1-dev"
    # relative paths are relative to the catalog file, not the working directory
    assert catalog.get("sd-local").resolved_path() == str((tmp_path / "weights" / "sd").resolve())
    assert catalog.for_bfl_endpoint("flux-pro-1.1").name == "flux-dev"
    assert catalog.for_bfl_endpoint("flux-schnell") is None
    assert catalog.bfl_endpoints() == {"flux-dev": "flux-dev", "flux-pro-1.1": "flux-dev"}


def test_duplicate_model_names_are_rejected(tmp_path):
    file = write(tmp_path, '[[models]]\nname = "a"\npath = "/x"\n[[models]]\nname = "a"\npath = "/y"\n')
    with pytest.raises(CatalogError, match="model name 'a' is used twice"):
        ModelCatalog.load(file)


def test_an_endpoint_maps_to_one_model_only(tmp_path):
    file = write(
        tmp_path,
        '[[models]]\nname = "a"\npath = "/x"\nbfl_endpoints = ["flux-dev"]\n'
        '[[models]]\nname = "b"\npath = "/y"\nbfl_endpoints = ["flux-dev"]\n',
    )
    with pytest.raises(CatalogError, match="'flux-dev' is mapped to both 'a' and 'b'"):
        ModelCatalog.load(file)


def test_bad_entries_are_reported_with_file_model_and_field(tmp_path):
    file = write(
        tmp_path,
        '[[models]]\nname = "ok"\npath = "/x"\n'
        '[[models]]\nname = "broken"\npath = "/y"\ndevice = "tpu"\nsteps = 4\n',
    )
    with pytest.raises(CatalogError) as info:
        ModelCatalog.load(file)
    message = str(info.value)
    assert str(file) in message
    assert "models[1] ('broken') device" in message
    assert "models[1] ('broken') steps" in message  # typo'd field: extra keys are refused


def test_missing_weights_location_and_inconsistent_steps(tmp_path):
    with pytest.raises(CatalogError, match="needs a 'path' or a 'repo_id'"):
        ModelCatalog.load(write(tmp_path, '[[models]]\nname = "a"\n'))
    with pytest.raises(CatalogError, match="default_steps \\(60\\) exceeds max_steps \\(50\\)"):
        ModelCatalog.load(write(tmp_path, '[[models]]\nname = "a"\npath = "/x"\ndefault_steps = 60\n'))


def test_unreadable_or_empty_files(tmp_path):
    with pytest.raises(CatalogError, match="cannot read model catalog"):
        ModelCatalog.load(tmp_path / "missing.toml")
    with pytest.raises(CatalogError, match="not valid TOML"):
        ModelCatalog.load(write(tmp_path, "[[models]\nname = 'a'"))
    with pytest.raises(CatalogError, match="no models"):
        ModelCatalog.load(write(tmp_path, "# nothing here\n"))
    with pytest.raises(CatalogError, match="unknown top-level keys \\['model'\\]"):
        ModelCatalog.load(write(tmp_path, '[[model]]\nname = "a"\npath = "/x"\n'))


def test_weights_folder_sidecar_fills_unset_defaults(tmp_path):
    weights = tmp_path / "tiny"
    weights.mkdir()
    (weights / "pixelmill.json").write_text(
        json.dumps({"default_steps": 6, "default_guidance": 1.5, "default_true_cfg": 2.5, "max_sequence_length": 16})
    )
    file = write(
        tmp_path,
        '[[models]]\nname = "a"\npath = "tiny"\n'
        '[[models]]\nname = "b"\npath = "tiny"\ndefault_steps = 9\n',
    )
    catalog = ModelCatalog.load(file)
    assert (catalog.get("a").default_steps, catalog.get("a").default_guidance) == (6, 1.5)
    assert (catalog.get("a").default_true_cfg, catalog.get("a").max_sequence_length) == (2.5, 16)
    # values written in the catalog win over the sidecar
    assert (catalog.get("b").default_steps, catalog.get("b").default_guidance) == (9, 1.5)


def test_invalid_names_are_refused():
    with pytest.raises(ValueError, match="model name"):
        ModelSpec(name="has space", path="/x")
    with pytest.raises(ValueError, match="listed twice"):
        ModelSpec(name="a", path="/x", bfl_endpoints=["flux-dev", "flux-dev"])


def test_the_documented_operator_example_is_a_valid_catalog():
    text = (Path(__file__).parents[2] / "src/pixelmill/models/default_catalog.toml").read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Example operator catalog" in line)
    example: list[str] = []
    for line in lines[start + 1 :]:
        if not line.startswith("#"):
            break
        example.append(line[2:] if line.startswith("# ") else line[1:])
    body = "\n".join(example)
    catalog = ModelCatalog.from_toml(body[body.index("[[models]]") :], source="example")
    assert catalog.names() == ["flux-dev", "flux-schnell", "sdxl"]
    assert catalog.for_bfl_endpoint("flux-schnell").name == "flux-schnell"
    assert catalog.for_bfl_endpoint("flux-pro-1.1").name == "flux-dev"
