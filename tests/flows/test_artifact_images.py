"""Images in the Prefect UI without their bytes in Prefect's database (``results_url``)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from prefect import flow

from qlcp.flows.artifacts import publish_image

pytestmark = pytest.mark.usefixtures("prefect_db")

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40          # ~10 KB standing in for a light curve


@flow
def _publish(path: str, root: str, url: str | None, key: str) -> None:
    publish_image(path, Path(root), url, key, "light curve")


def _artifact(key: str):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    found = asyncio.run(read())
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def product(tmp_path):
    png = tmp_path / "red" / "20240606" / "lc SIMV V.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(PNG)
    return png


def test_served_root_gives_an_image_url(product):
    _publish(str(product), str(product.parents[1]), "http://obs.example/qlcp/", "t-url")
    a = _artifact("t-url")
    assert a.type == "image"
    assert a.data == "http://obs.example/qlcp/20240606/lc%20SIMV%20V.png"


def test_without_results_url_a_link_to_the_file(product, tmp_path):
    _publish(str(product), str(product.parents[1]), None, "t-file")
    a = _artifact("t-file")
    assert a.data == f"[lc SIMV V.png]({product.resolve().as_uri()})" and len(a.data) < 200
    # a product outside the served root cannot have a URL under it: the file's path, not a wrong URL
    other = tmp_path / "elsewhere.png"
    other.write_bytes(PNG)
    _publish(str(other), str(product.parents[1]), "http://obs.example/qlcp/", "t-outside")
    assert _artifact("t-outside").data == f"[elsewhere.png]({other.resolve().as_uri()})"


def test_embed_keeps_the_png_in_the_database(product):
    _publish(str(product), str(product.parents[1]), "embed", "t-embed")
    a = _artifact("t-embed")
    assert a.type == "image" and a.data.startswith("data:image/png;base64,")
    assert base64.b64decode(a.data.split(",", 1)[1]) == PNG


def test_missing_image_publishes_nothing(tmp_path):
    _publish(str(tmp_path / "none.png"), str(tmp_path), None, "t-none")
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["t-none"])))

    assert asyncio.run(read()) == []
