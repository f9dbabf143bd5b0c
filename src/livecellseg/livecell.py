"""LIVECell's conventions: its layout on disk, its file naming, its JSON form, its download.

Layout under a data root (what `images.zip` and the annotation files unpack to):
    images/livecell_train_val_images/<CellLine>/<name>.tif
    images/livecell_test_images/<CellLine>/<name>.tif
    annotations/livecell_coco_{train,val,test}.json
Image names start with the cell line: `A172_Phase_C7_1_00d00h00m_1.tif` (`parse_name`: line,
well, position in the well, elapsed time of the time-lapse).

The annotation files as LIVECell's bucket serves them are plain COCO: `annotations` is a
list (pycocotools' `COCO()` loads them), and image entries carry extra fields
(`original_filename`, `url`). The id -> annotation *map* form is the Kaggle competition's
copy; `coco.iter_annotations` reads both.

The three files list 5,387 image entries for 5,239 image files: some pictures were
annotated twice (twice within one file, or once in train and once in val). `subset` keeps
one entry per file name (`subset.keep_one`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from livecellseg.errors import DataError, LivecellsegError

log = logging.getLogger(__name__)

BASE_URL = "https://livecell-dataset.s3.eu-central-1.amazonaws.com/LIVECell_dataset_2021"
IMAGES_ZIP = "images.zip"
ANNOTATION_FILES = tuple(f"livecell_coco_{s}.json" for s in ("train", "val", "test"))
ANNOTATIONS_URL_DIR = "annotations/LIVECell"


SPLITS = ("train", "val", "test")
_SPLIT_FILE = re.compile(r"^livecell_coco_(train|val|test)\.json$")


def image_dir(split: str) -> str:
    return "images/livecell_test_images" if split == "test" else "images/livecell_train_val_images"


def split_of(annotation_file: str | Path) -> str | None:
    """LIVECell's split an annotation file holds ('livecell_coco_val.json' -> 'val'), or None."""
    m = _SPLIT_FILE.match(Path(annotation_file).name)
    return m.group(1) if m else None


def write_coco(path: Path, images: list[dict], annotations: list[dict]) -> None:
    """Write a COCO file as LIVECell's bucket does: `annotations` is a list."""
    doc = {
        "info": {"description": "LIVECell-format data", "version": "1.0", "year": 2021},
        "licenses": [
            {
                "id": 1,
                "name": "CC BY-NC 4.0",
                "url": "https://creativecommons.org/licenses/by-nc/4.0/",
            }
        ],
        "images": images,
        "categories": [{"supercategory": "cell", "id": 1, "name": "cell"}],
        "annotations": annotations,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def index_images(root: Path) -> dict[str, Path]:
    """file name -> path for every TIFF under root/images (LIVECell nests them by cell line)."""
    index: dict[str, Path] = {}
    for p in sorted((root / "images").rglob("*.tif*")):
        index.setdefault(p.name, p)
    return index


_CELL_LINE = re.compile(r"^([A-Za-z0-9]+)_Phase_")


def cell_line_of(file_name: str) -> str:
    """'A172_Phase_C7_1_00d00h00m_1.tif' -> 'A172' (LIVECell's naming)."""
    m = _CELL_LINE.match(Path(file_name).name)
    if m is None:
        raise DataError(
            f"{file_name}: name does not follow LIVECell's '<CellLine>_Phase_<well>_...tif' "
            "pattern; rename it so the cell line can be read from it"
        )
    return m.group(1)


def cell_line(image: dict) -> str:
    """An image entry's cell line: its "cell_line" key, else read from its file name."""
    return image.get("cell_line") or cell_line_of(image["file_name"])


# --- time-lapse names ------------------------------------------------------------------

LIVECELL_NAME = (
    r"(?P<line>[A-Za-z0-9]+)_Phase_(?P<well>[A-Za-z]+\d+)_(?P<field>\d+)_"
    r"(?P<days>\d+)d(?P<hours>\d+)h(?P<minutes>\d+)m_(?P<crop>\d+)\.tiff?"
)
# a --pattern names `well` and either `hours` alone (decimal hours) or days/hours/minutes;
# `line`, `field` and `crop` are optional
REQUIRED_GROUPS = {"well", "hours"}


@dataclass(frozen=True)
class TimePoint:
    """Where and when an image was taken."""

    line: str
    well: str
    position: str  # field and crop ("1_3"): the same place in the well at every time
    hours: float  # since the start of imaging


def parse_name(file_name: str, pattern: str | None = None) -> TimePoint:
    """The cell line, well, position and elapsed hours a file name gives.

    `pattern`: a regular expression matched against the whole base name, with the named
    groups `well` and `hours` (a decimal number of hours, or with `days` and `minutes`
    beside it: LIVECell's `01d12h00m`), optionally `line`, `field`, `crop`.
    """
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    regex = re.compile(pattern or LIVECELL_NAME)
    if missing := REQUIRED_GROUPS - set(regex.groupindex):
        raise LivecellsegError(
            f"--pattern {pattern!r}: names no group {', '.join(sorted(missing))}; give "
            "(?P<well>...) and (?P<hours>...) (with (?P<days>...) and (?P<minutes>...) if the "
            "time is written as days, hours, minutes)"
        )
    m = regex.fullmatch(base)
    if m is None:
        shape = (
            "the --pattern given"
            if pattern
            else ("LIVECell's <line>_Phase_<well>_<field>_<DD>d<HH>h<MM>m_<crop>.tif")
        )
        raise LivecellsegError(
            f"{file_name}: name does not follow {shape}; pass --pattern with named groups "
            "well and hours (docs/using.md, Growth curves)"
        )
    g = m.groupdict()
    hours = float(g["hours"]) + 24 * float(g.get("days") or 0) + float(g.get("minutes") or 0) / 60
    position = "_".join(g[k] for k in ("field", "crop") if g.get(k)) or "1"
    return TimePoint(g.get("line") or "", g["well"], position, hours)


# --- download -------------------------------------------------------------------------------

_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')


def download(url: str, dest: Path, *, chunk: int = 1 << 20) -> Path:
    """Download url to dest, resuming a partial `dest.part`; verify size and (if given) MD5 ETag.

    A server that ignores the Range header restarts the download from zero. On a size or
    checksum mismatch the partial file is removed and a DataError names the file.
    """
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part file is already complete
            return _finish(part, dest, url, expected_size=have, etag=None)
        raise DataError(
            f"{url}: HTTP {e.code} {e.reason}; check the URL or try again later"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: cannot connect ({e}); check your internet connection") from None
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        etag = response.headers.get("ETag")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name) as bar,
        ):
            try:
                while block := response.read(chunk):
                    f.write(block)
                    bar.update(len(block))
            except (http.client.HTTPException, OSError) as e:
                raise DataError(
                    f"{dest}: download of {url} interrupted at {f.tell()} bytes ({e!r}); "
                    "run the command again to resume"
                ) from None
    return _finish(part, dest, url, expected_size=total, etag=etag)  # ETag: the whole file


def _finish(
    part: Path, dest: Path, url: str, *, expected_size: int | None, etag: str | None
) -> Path:
    size = part.stat().st_size
    if expected_size is not None and size < expected_size:  # kept: the next run resumes it
        raise DataError(
            f"{dest}: download of {url} interrupted at {size} of {expected_size} bytes; "
            "run the command again to resume"
        )
    if expected_size is not None and size > expected_size:
        part.unlink()
        raise DataError(
            f"{dest}: download of {url} gave {size} bytes, expected {expected_size}; "
            "run the command again"
        )
    m = _MD5_ETAG.match(etag or "")
    if m:  # S3 single-part uploads carry the MD5 as ETag
        digest = md5sum(part)
        if digest != m.group(1):
            part.unlink()
            raise DataError(
                f"{dest}: checksum mismatch (md5 {digest}, server says {m.group(1)}); "
                "the download was corrupted, run the command again"
            )
    os.replace(part, dest)
    return dest


def md5sum(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


SHA256SUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` in the data root checks the files


def record_sha256(root: Path, path: Path) -> str:
    """Record path's sha256 in root/SHA256SUMS (paths relative to root); a file fetched again
    must hash as first recorded, else a DataError says it changed."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    manifest = root / SHA256SUMS
    sums: dict[str, str] = {}
    if manifest.exists():
        for line in manifest.read_text().splitlines():
            known, _, name = line.partition("  ")
            sums[name] = known
    name = path.relative_to(root).as_posix()
    if sums.get(name, digest) != digest:
        raise DataError(
            f"{path}: sha256 {digest} differs from the {sums[name]} recorded in {manifest} at "
            "the first download; the server's file changed or this copy is corrupt: delete it "
            "and fetch again, or remove its line from the manifest if the change is intended"
        )
    sums[name] = digest
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    os.replace(tmp, manifest)
    return digest


def safe_extract(archive: Path, target: Path) -> int:
    """Extract a zip, refusing any member whose path would land outside `target`."""
    target = target.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for m in members:
                out = (target / m.filename).resolve()
                if not out.is_relative_to(target):
                    raise DataError(
                        f"{archive}: member '{m.filename}' would be written outside {target}; "
                        "the archive is unsafe, do not use it"
                    )
            for m in tqdm(members, desc=f"extract {archive.name}", unit="file"):
                zf.extract(m, target)
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: not a valid zip ({e}); delete it and download again") from None
    return len(members)


def fetch_livecell(
    out: Path, *, base_url: str = BASE_URL, keep_zip: bool = False
) -> dict[str, Any]:
    """Download images.zip and the three annotation files into `out` in the layout above.

    What is verified on the first download: each file's size (Content-Length, resumed
    downloads included) and, where the server's ETag is an MD5 (single-part S3 uploads),
    its MD5; a multipart upload's ETag is no MD5, so images.zip is checked by size only. The
    sha256 of every file is then recorded in out/SHA256SUMS: a file fetched again must match
    it, and `dvc add` (data.dvc) pins the whole tree from then on.
    """
    out.mkdir(parents=True, exist_ok=True)
    done = out / "images" / ".extracted"  # a rerun after a failure does not fetch 1.3 GB again
    if done.exists():
        n_files = int(done.read_text())
        log.info(
            "%s already unpacked (%d members); delete %s to fetch it again",
            IMAGES_ZIP,
            n_files,
            done,
        )
    else:
        zip_path = download(f"{base_url}/{IMAGES_ZIP}", out / IMAGES_ZIP)
        record_sha256(out, zip_path)
        n_files = safe_extract(zip_path, out)
        done.write_text(str(n_files))
        if not keep_zip:
            zip_path.unlink()
    for name in ANNOTATION_FILES:
        dest = out / "annotations" / name
        if not dest.exists():  # downloads land under their name only when complete
            download(f"{base_url}/{ANNOTATIONS_URL_DIR}/{name}", dest)
            record_sha256(out, dest)
    n_images = len(index_images(out))
    if n_images == 0:
        raise DataError(f"{out}: {IMAGES_ZIP} held no .tif under images/; check --base-url")
    log.info("LIVECell in %s: %d archive members, %d images", out, n_files, n_images)
    return {"images": n_images, "archive_members": n_files}
