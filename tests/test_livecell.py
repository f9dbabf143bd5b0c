"""The real-data path, against a LIVECell-format archive served from 127.0.0.1."""

import hashlib
import http.server
import shutil
import zipfile

import pytest

from livecellseg.errors import DataError
from livecellseg.livecell import (
    ANNOTATION_FILES,
    download,
    fetch_livecell,
    index_images,
    record_sha256,
    safe_extract,
)
from tests.helpers import RangeHandler, make_livecell_root, serve_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """LIVECell_dataset_2021/{images.zip, annotations/LIVECell/*.json} like the real bucket."""
    raw = make_livecell_root(tmp_path_factory.mktemp("raw"), n_images=6, width=160, height=120)
    www = tmp_path_factory.mktemp("www")
    base = www / "LIVECell_dataset_2021"
    (base / "annotations" / "LIVECell").mkdir(parents=True)
    with zipfile.ZipFile(base / "images.zip", "w") as zf:
        for p in sorted((raw / "images").rglob("*")):
            zf.write(p, p.relative_to(raw).as_posix())
    for name in ANNOTATION_FILES:
        shutil.copy(raw / "annotations" / name, base / "annotations" / "LIVECell" / name)
    return www, raw


@pytest.fixture
def handler():
    class H(RangeHandler):
        ranges_seen = []

    return H


@pytest.mark.slow  # a server on 127.0.0.1
def test_fetch_makes_the_livecell_layout(site, tmp_path, handler):
    www, raw = site
    server, url = serve_site(www, handler)
    try:
        fetch_livecell(tmp_path / "livecell", base_url=url)
        (tmp_path / "livecell" / "annotations" / ANNOTATION_FILES[1]).unlink()
        n_requests = len(handler.paths_seen)
        fetch_livecell(tmp_path / "livecell", base_url=url)  # a rerun fetches only what is missing
        assert handler.paths_seen[n_requests:] == [
            f"/LIVECell_dataset_2021/annotations/LIVECell/{ANNOTATION_FILES[1]}"
        ]
    finally:
        server.shutdown()
    out = tmp_path / "livecell"
    assert sorted(index_images(out)) == sorted(index_images(raw))
    for name in ANNOTATION_FILES:
        assert (out / "annotations" / name).read_bytes() == (
            raw / "annotations" / name
        ).read_bytes()
    assert not (out / "images.zip").exists()
    sums = dict(
        reversed(line.split("  ")) for line in (out / "SHA256SUMS").read_text().splitlines()
    )
    assert sorted(sums) == sorted(["images.zip", *(f"annotations/{n}" for n in ANNOTATION_FILES)])
    for name in ANNOTATION_FILES:
        digest = hashlib.sha256((out / "annotations" / name).read_bytes()).hexdigest()
        assert sums[f"annotations/{name}"] == digest
    assert (
        sums["images.zip"]
        == hashlib.sha256((www / "LIVECell_dataset_2021/images.zip").read_bytes()).hexdigest()
    )


def test_a_file_that_changed_since_the_first_download_is_refused(tmp_path):
    (tmp_path / "a.json").write_text("first")
    record_sha256(tmp_path, tmp_path / "a.json")
    record_sha256(tmp_path, tmp_path / "a.json")  # the same again: fine
    (tmp_path / "a.json").write_text("changed")
    with pytest.raises(DataError, match="a.json: sha256 .* differs from the .* recorded"):
        record_sha256(tmp_path, tmp_path / "a.json")


@pytest.mark.slow  # a server on 127.0.0.1
def test_interrupted_download_resumes(site, tmp_path, handler):
    www, _ = site
    zip_path = www / "LIVECell_dataset_2021" / "images.zip"
    dest = tmp_path / "images.zip"
    handler.cut_after = zip_path.stat().st_size // 3
    server, url = serve_site(www, handler)
    try:
        with pytest.raises(DataError, match="interrupted at .* run the command again to resume"):
            download(f"{url}/images.zip", dest)
        assert dest.with_name("images.zip.part").stat().st_size == handler.cut_after
        handler.cut_after = None
        download(f"{url}/images.zip", dest)
    finally:
        server.shutdown()
    assert handler.ranges_seen == [f"bytes={zip_path.stat().st_size // 3}-"]
    assert dest.read_bytes() == zip_path.read_bytes()


@pytest.mark.slow  # a server on 127.0.0.1
def test_server_without_range_restarts_cleanly(site, tmp_path):
    www, _ = site
    zip_path = www / "LIVECell_dataset_2021" / "images.zip"
    dest = tmp_path / "images.zip"
    dest.with_name("images.zip.part").write_bytes(b"junk from an old attempt")
    server, url = serve_site(www, http.server.SimpleHTTPRequestHandler)  # ignores Range
    try:
        download(f"{url}/images.zip", dest)
    finally:
        server.shutdown()
    assert dest.read_bytes() == zip_path.read_bytes()


@pytest.mark.slow  # a server on 127.0.0.1
def test_checksum_mismatch_is_reported(site, tmp_path, handler):
    www, _ = site
    handler.etag = "0" * 32
    server, url = serve_site(www, handler)
    try:
        with pytest.raises(DataError, match="checksum mismatch"):
            download(f"{url}/images.zip", tmp_path / "images.zip")
        with pytest.raises(DataError, match="HTTP 404"):
            download(f"{url}/nothing.zip", tmp_path / "nothing.zip")
    finally:
        server.shutdown()
    assert not (tmp_path / "images.zip").exists()
    assert not (tmp_path / "images.zip.part").exists()


def test_zip_slip_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("images/ok.tif", b"x")
        zf.writestr("../../escaped.txt", b"x")
    with pytest.raises(DataError, match="outside"):
        safe_extract(evil, tmp_path / "target")
    assert not (tmp_path / "escaped.txt").exists()
    absolute = tmp_path / "absolute.zip"
    with zipfile.ZipFile(absolute, "w") as zf:
        zf.writestr(str(tmp_path / "abs.txt"), b"x")  # an absolute member name
    with pytest.raises(DataError, match="would be written outside"):
        safe_extract(absolute, tmp_path / "target")
    assert not (tmp_path / "abs.txt").exists()
    assert not (tmp_path / "target" / "images" / "ok.tif").exists()  # nothing extracted
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "target")
