"""Growth curves from time-lapse images: what a LIVECell name says, and a well's doubling time.

LIVECell's images are Incucyte time-lapse crops, named
`<line>_Phase_<well>_<field>_<DD>d<HH>h<MM>m_<crop>.tif`: `SHSY5Y_Phase_B10_1_01d12h00m_1.tif`
is well B10, field 1, crop 1 (a position in the well: field and crop), 1 day 12 h after the
start. `livecell.parse_name` reads that (or any naming a regular expression describes);
`doubling_time` fits log2(count) against time over a well's exponential phase. Pure functions
of names and numbers, but `analyse` (reads and segments image files with the function it is
given) and `write_growth` (writes its results).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from livecellseg.errors import LivecellsegError
from livecellseg.livecell import LIVECELL_NAME, TimePoint, parse_name  # noqa: F401 (API)

PLATEAU = 0.9  # a mean count within 10% of a well's highest: it has stopped growing


@dataclass(frozen=True)
class DoublingTime:
    """A well's doubling time from a log-linear fit, or why there is none."""

    hours: float | None  # None: not estimable (`reason` says why)
    ci95: tuple[float, float] | None  # the 95% interval; its upper end may be inf
    r2: float | None
    points: int  # (position, time) counts in the fit
    start_h: float | None  # the exponential phase fitted
    end_h: float | None
    reason: str = ""

    @property
    def estimable(self) -> bool:
        return self.hours is not None


def _not_estimable(reason: str, points: int = 0) -> DoublingTime:
    return DoublingTime(None, None, None, points, None, None, f"not estimable: {reason}")


def doubling_time(hours: np.ndarray, counts: np.ndarray, *, min_times: int = 3) -> DoublingTime:
    """Doubling time of one well from its counts (one per position and time point).

    The exponential phase runs from the first time point to the first whose mean count is
    within PLATEAU of the highest (the culture has stopped growing: confluence; later points
    only scatter around that level); log2(count) is fitted
    against time by least squares over every count in it, and the doubling time is
    1/slope, its 95% interval from the slope's t interval. Not estimable: fewer than
    `min_times` time points in the phase, or a slope whose interval does not exclude zero
    (a flat or shrinking well). Zero counts cannot be logged and are left out (counted in
    `points` only if used).
    """
    hours, counts = np.asarray(hours, float), np.asarray(counts, float)
    if len(hours) != len(counts):
        raise ValueError(f"{len(hours)} times for {len(counts)} counts")
    keep = counts > 0
    hours, counts = hours[keep], counts[keep]
    times = np.unique(hours)
    if len(times) < min_times:
        return _not_estimable(
            f"{len(times)} time points with cells, {min_times} needed", len(hours)
        )
    means = np.array([counts[hours == t].mean() for t in times])
    end = times[int(np.argmax(means >= PLATEAU * means.max()))]
    phase = hours <= end
    n_times = int((times <= end).sum())
    if n_times < min_times:
        return _not_estimable(
            f"no growth after {end:g} h (the count is at its highest there), "
            f"{n_times} time points of growth, {min_times} needed",
            int(phase.sum()),
        )
    x, y = hours[phase], np.log2(counts[phase])
    fit = stats.linregress(x, y)
    df = len(x) - 2
    half = stats.t.ppf(0.975, df) * fit.stderr if df > 0 else math.inf
    if not fit.slope - half > 0:
        return _not_estimable(
            f"no significant growth (log2 slope {fit.slope:.4g} +- {half:.2g} per h)", len(x)
        )
    hi = 1 / (fit.slope - half)
    return DoublingTime(
        hours=1 / fit.slope,
        ci95=(1 / (fit.slope + half), hi),
        r2=float(fit.rvalue**2),
        points=len(x),
        start_h=float(times[0]),
        end_h=float(end),
    )


def image_measures(rles: list[dict], height: int, width: int) -> dict:
    """Cells, confluence (% of the image any cell covers) and mean cell area of one image."""
    from pycocotools import mask as mask_utils

    if not rles:
        return {"cells": 0, "confluence_pct": 0.0, "mean_cell_area_px": ""}
    covered = float(mask_utils.area(mask_utils.merge(rles, intersect=False)))
    areas = [float(mask_utils.area(r)) for r in rles]
    return {
        "cells": len(rles),
        "confluence_pct": round(100 * covered / (height * width), 3),
        "mean_cell_area_px": round(float(np.mean(areas)), 1),
    }


def well_rows(rows: list[dict]) -> list[dict]:
    """Per well and time point: mean and sd over positions of the count and the confluence
    (`rows`: one per image with line, well, hours, cells, confluence_pct)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["line"], r["well"], r["hours"]), []).append(r)
    out = []
    for (line, well, hours), rs in sorted(groups.items()):
        cells = np.array([r["cells"] for r in rs], float)
        conf = np.array([r["confluence_pct"] for r in rs], float)
        out.append(
            {
                "line": line,
                "well": well,
                "hours": hours,
                "positions": len(rs),
                "cells_mean": round(float(cells.mean()), 3),
                "cells_sd": _sd(cells),
                "confluence_mean": round(float(conf.mean()), 3),
                "confluence_sd": _sd(conf),
            }
        )
    return out


def _sd(values: np.ndarray) -> float:
    return round(float(values.std(ddof=1)), 3) if len(values) > 1 else 0.0


def well_name(row: dict) -> str:
    """The name a well goes by in fits, tables and plots: "<line> <well>" ("B3" if no line)."""
    return f"{row['line']} {row['well']}".strip()


def image_row(file_name: str, point: TimePoint, measures: dict) -> dict:
    """One image's growth row: its name, where and when, and `image_measures`."""
    return {"file": file_name, **asdict(point)} | measures


def sort_rows(rows: list[dict]) -> None:
    """By line, well, time, position: the order of growth.csv."""
    rows.sort(key=lambda r: (r["line"], r["well"], r["hours"], r["position"]))


def fit_wells(rows: list[dict]) -> dict[str, DoublingTime]:
    """`doubling_time` of each well ("<line> <well>"), from its per-image counts."""
    wells: dict[str, list[dict]] = {}
    for r in rows:
        wells.setdefault(well_name(r), []).append(r)
    return {
        name: doubling_time(np.array([r["hours"] for r in rs]), np.array([r["cells"] for r in rs]))
        for name, rs in sorted(wells.items())
    }


def plot_growth(wells: list[dict], fits: dict[str, DoublingTime], path) -> None:
    """Count and confluence against time per well (mean +- sd over positions) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from livecellseg.io import atomic_path

    fig, (ax_n, ax_c) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in fits:
        rs = [w for w in wells if well_name(w) == name]
        t = np.array([w["hours"] for w in rs])
        for ax, key in ((ax_n, "cells"), (ax_c, "confluence")):
            m, s = np.array([w[f"{key}_mean"] for w in rs]), np.array([w[f"{key}_sd"] for w in rs])
            fit = fits[name]
            label = name + (f" (doubling {fit.hours:.1f} h)" if fit.estimable else "")
            (line,) = ax.plot(t, m, marker="o", ms=3, label=label)
            ax.fill_between(t, m - s, m + s, color=line.get_color(), alpha=0.2)
    ax_n.set(xlabel="hours", ylabel="cells per image", yscale="log", title="Cell count")
    ax_c.set(xlabel="hours", ylabel="% of image covered", title="Confluence")
    ax_n.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


@dataclass
class Growth:
    """A series segmented: per-image rows, per-well rows, per-well fits, files skipped."""

    rows: list[dict]
    wells: list[dict]
    fits: dict[str, DoublingTime]
    skipped: list[str]


def parse_names(paths: list, pattern: str | None = None) -> list[TimePoint]:
    """`parse_name` of every file: callers parse before any work, so a bad name stops at once."""
    from pathlib import Path

    return [parse_name(Path(p).name, pattern) for p in paths]


def analyse(paths: list, points: list[TimePoint], segment, progress=None) -> Growth:
    """Segment each image (`points`: `parse_names` of `paths`) with `segment(image) -> rles`
    and measure it. An unreadable image is skipped and listed."""
    from pathlib import Path

    from livecellseg.images import load_image

    rows, skipped = [], []
    items = list(zip(paths, points, strict=True))
    for path, point in progress(items) if progress else items:
        try:
            image, _ = load_image(path)
        except LivecellsegError as e:
            skipped.append(str(e))
            continue
        measures = image_measures(segment(image), *image.shape)
        rows.append(image_row(Path(path).name, point, measures))
    if not rows:
        raise LivecellsegError(f"none of the {len(paths)} images could be read: {skipped[0]}")
    sort_rows(rows)
    return Growth(rows, well_rows(rows), fit_wells(rows), skipped)


def write_growth(growth: Growth, out) -> list:
    """growth.csv, wells.csv, doubling.json and growth.png in `out`; their paths."""
    from pathlib import Path

    from livecellseg.io import write_csv, write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / n for n in ("growth.csv", "wells.csv", "doubling.json", "growth.png")]
    write_csv(paths[0], growth.rows)
    write_csv(paths[1], growth.wells)
    write_json(paths[2], {name: asdict(f) for name, f in growth.fits.items()})
    plot_growth(growth.wells, growth.fits, paths[3])
    return paths


def coco_rows(images: list[dict], segmentations: dict[int, list[dict]]) -> tuple[list, list]:
    """Growth rows of a COCO document's images (`segmentations`: image id -> the RLEs of its
    cells, ground truth or predictions above a score), and the names that are not
    time-lapse names (skipped: they belong to no well and time)."""
    rows, skipped = [], []
    for im in images:
        try:
            point = parse_name(im["file_name"])
        except LivecellsegError:
            skipped.append(im["file_name"])
            continue
        measures = image_measures(segmentations.get(im["id"], []), im["height"], im["width"])
        rows.append(image_row(im["file_name"], point, measures))
    sort_rows(rows)
    return rows, skipped


def fit_summary(fit: DoublingTime, truth: DoublingTime | None = None) -> dict:
    """A fit as flat numbers (a metrics file's leaves), beside the truth's if given:
    `error_pct` is 100 (model - truth) / truth where both are estimable, else null."""
    out = {
        "doubling_h": _round(fit.hours),
        "ci95_low_h": _round(fit.ci95[0]) if fit.ci95 else None,
        "ci95_high_h": _round(fit.ci95[1]) if fit.ci95 else None,
        "r2": _round(fit.r2, 4),
        "points": fit.points,
    }
    if truth is not None:
        both = fit.estimable and truth.estimable
        out["error_pct"] = _round(100 * (fit.hours / truth.hours - 1)) if both else None
    if not fit.estimable:
        out["reason"] = fit.reason
    return out


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def segmentations_by_image(
    annotations: list[dict], score_thresh: float | None = None
) -> dict[int, list]:
    """image id -> the segmentations of its cells (predictions: those scoring above
    `score_thresh`, as evaluation counts them)."""
    out: dict[int, list] = {}
    for a in annotations:
        if score_thresh is None or a["score"] > score_thresh:
            out.setdefault(a["image_id"], []).append(a["segmentation"])
    return out


@dataclass
class Comparison:
    """Growth of a set of images by the ground truth and by each model."""

    metrics: dict  # flat numbers per source and well (a metrics file), with each model's errors
    wells: dict[str, list[dict]]  # source -> `well_rows`
    fits: dict[str, dict[str, DoublingTime]]  # source -> well -> fit
    skipped: list[str]  # names that are not time-lapse names


def compare(images: list[dict], sources: dict[str, dict[int, list]]) -> Comparison:
    """Counts and doubling times per well of `images` (COCO entries) from each source
    (`segmentations_by_image`; the first is the truth): each model's doubling time beside the
    truth's, its error per well, and the median absolute error over the wells both fit."""
    wells, fits = {}, {}
    for name, segs in sources.items():
        rows, skipped = coco_rows(images, segs)
        wells[name], fits[name] = well_rows(rows), fit_wells(rows)
    truth_name, *models = sources
    metrics: dict = {"images": len(images) - len(skipped), "skipped": len(skipped)}
    metrics[truth_name] = {"wells": {w: fit_summary(f) for w, f in fits[truth_name].items()}}
    for name in models:
        truth = fits[truth_name]
        per_well = {w: fit_summary(f, truth[w]) for w, f in fits[name].items()}
        errors = [abs(s["error_pct"]) for s in per_well.values() if s["error_pct"] is not None]
        metrics[name] = {
            "median_abs_error_pct": round(float(np.median(errors)), 2) if errors else None,
            "wells_compared": len(errors),
            "wells": per_well,
        }
    return Comparison(metrics, wells, fits, skipped)


def count_table(comparison: Comparison, well: str) -> list[dict]:
    """One well's mean count per image at each time point, a column per source."""
    cols = {
        name: {r["hours"]: r["cells_mean"] for r in rows if well_name(r) == well}
        for name, rows in comparison.wells.items()
    }
    hours = sorted(next(iter(cols.values())))
    return [{"hours": h} | {name: c.get(h, 0.0) for name, c in cols.items()} for h in hours]


def plot_comparison(comparison: Comparison, path) -> None:
    """A panel per well: mean count per image against time (log scale) from each source,
    with its doubling time in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from livecellseg.io import atomic_path

    truth_name = next(iter(comparison.fits))
    wells = list(comparison.fits[truth_name]) or ["(no wells)"]
    cols = min(len(wells), 4)
    rows = -(-len(wells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.9 * rows), squeeze=False)
    for ax, well in zip(axes.ravel(), wells, strict=False):
        table = count_table(comparison, well) if comparison.fits[truth_name] else []
        for k, name in enumerate(comparison.fits):
            fit = comparison.fits[name].get(well)
            h = f"{fit.hours:.0f} h" if fit is not None and fit.estimable else "n/e"
            ax.plot(
                [r["hours"] for r in table],
                [max(r[name], 0.5) for r in table],
                marker="o",
                ms=3,
                color="black" if k == 0 else f"C{k - 1}",
                label=f"{name}: {h}",
            )
        ax.set(title=well, xlabel="hours", yscale="log")
        ax.legend(fontsize=7, title="doubling time", title_fontsize=7)
    for ax in axes.ravel()[len(wells) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("cells per image")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def describe(name: str, f: DoublingTime) -> str:
    """One line on a well's fit."""
    if not f.estimable:
        return f"{name}: {f.reason}"
    return (
        f"{name}: doubling time {f.hours:.1f} h (95% CI {f.ci95[0]:.1f}-{f.ci95[1]:.1f}), "
        f"R2 {f.r2:.3f}, {f.start_h:g}-{f.end_h:g} h, {f.points} counts"
    )
