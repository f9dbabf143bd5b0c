"""What makes a cell visible in a phase-contrast frame, measured the same way on real frames
and on generated ones (used by bench/realism.py, which prints the numbers and draws the
profiles).

- Lines: thin bright lines (cell membranes, where a flat cell ends, and processes) and thin
  dark lines are found as ridges of the Hessian at 1 px; at each ridge pixel (non-maximum
  suppressed across the line, strongest 1.5% of the frame) the grey profile is read across the
  line, -7..+7 px. The mean profile gives the line's contrast (peak minus the level 5-7 px
  away), its width (full width at half that contrast) and its flanks (the lowest value 1-3 px
  from a bright line's centre: a dark line beside it, or not). Line length per 1,000 px of
  cell area says how much of a cell is outline.
- Cells: where the frame is not flat background (local energy of the high-passed frame above
  the noise floor, closed and filled). Inside: the mean level against the background (a dark
  or a bright cell body), its fine texture (std of the 2-px high pass) and its granules (dark
  and bright spots, Laplacian of Gaussian at 1 px, per 1,000 px of cell area).
- Background: the std of pixels 6 px or more from any cell (camera noise).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.feature import hessian_matrix, hessian_matrix_eigvals

OFFSETS = np.arange(-7, 8)
TOP_SHARE = 0.015  # the strongest 1.5% of a frame's pixels count as line candidates


def foreground(image: np.ndarray) -> np.ndarray:
    """Pixels of cells: where the 8-px high pass has energy above the noise floor."""
    t = image.astype(np.float32)
    energy = ndimage.gaussian_filter(np.abs(t - ndimage.gaussian_filter(t, 8)), 2)
    fg = ndimage.binary_fill_holes(ndimage.binary_closing(energy > 2.2, iterations=2))
    labels, n = ndimage.label(fg)
    sizes = ndimage.sum_labels(fg, labels, range(1, n + 1))
    return np.isin(labels, 1 + np.flatnonzero(sizes >= 40))


def line_profiles(image: np.ndarray, bright: bool) -> np.ndarray:
    """Grey profiles (N, len(OFFSETS)) across the frame's thin bright (or dark) lines, minus
    the frame's median."""
    t = image.astype(np.float64)
    hrr, hrc, hcc = hessian_matrix(t, sigma=1.0, order="rc", use_gaussian_derivatives=False)
    l1, l2 = hessian_matrix_eigvals([hrr, hrc, hcc])
    lam = l2 if bright else l1  # a bright line curves down across it, a dark one up
    strength = -lam if bright else lam
    # across the line: the eigenvector of lam
    vr, vc = lam - hcc, hrc
    alt = np.hypot(vr, vc) < 1e-9
    vr, vc = np.where(alt, hrc, vr), np.where(alt, lam - hrr, vc)
    norm = np.hypot(vr, vc) + 1e-12
    vr, vc = vr / norm, vc / norm
    cut = np.quantile(strength, 1 - TOP_SHARE)
    other = np.abs(l1 if bright else l2)  # along the line: flat for a line, curved for a spot
    rr, cc = np.nonzero((strength > max(cut, 1e-6)) & (other < 0.5 * strength))
    keep = (rr > 8) & (rr < t.shape[0] - 9) & (cc > 8) & (cc < t.shape[1] - 9)
    rr, cc = rr[keep], cc[keep]
    dr, dc = vr[rr, cc], vc[rr, cc]
    s = strength
    ahead = ndimage.map_coordinates(s, [rr + dr, cc + dc], order=1)
    behind = ndimage.map_coordinates(s, [rr - dr, cc - dc], order=1)
    peak = (s[rr, cc] >= ahead) & (s[rr, cc] >= behind)  # the line's centre, not its side
    rr, cc, dr, dc = rr[peak], cc[peak], dr[peak], dc[peak]
    coords = [rr[:, None] + OFFSETS * dr[:, None], cc[:, None] + OFFSETS * dc[:, None]]
    prof = ndimage.map_coordinates(t, [coords[0].ravel(), coords[1].ravel()], order=1)
    prof = prof.reshape(len(rr), len(OFFSETS)) - np.median(t)
    return (prof + prof[:, ::-1]) / 2  # which side is which is not known: both sides alike


def profile_numbers(profile: np.ndarray) -> dict[str, float]:
    """Contrast (centre minus the level 5-7 px away), full width at half contrast (linear
    interpolation; the profile is symmetric) and the
    flank (lowest/highest 1-3 px from the centre, minus that level) of a mean profile."""
    far = profile[np.abs(OFFSETS) >= 5].mean()
    centre = profile[OFFSETS == 0][0] - far
    i = int(np.flatnonzero(OFFSETS == 0)[0])
    rel = (profile - far) / centre  # 1 at the centre
    j = i + 1
    while j < len(rel) - 1 and rel[j] >= 0.5:
        j += 1
    width = 2 * (j - 1 - i + (rel[j - 1] - 0.5) / max(rel[j - 1] - rel[j], 1e-9))  # symmetric
    near = profile[(np.abs(OFFSETS) >= 1) & (np.abs(OFFSETS) <= 3)] - far
    flank = near.min() if centre > 0 else near.max()
    return {"contrast": float(centre), "width_px": float(width), "flank": float(flank)}


def measure(images: list[np.ndarray]) -> dict:
    """The look numbers of a set of frames (means over frames with cells) and the mean
    profiles across their bright and dark lines."""
    rows, bright_p, dark_p = [], [], []
    for im in images:
        t = im.astype(np.float64)
        fg = foreground(im)
        far = ~ndimage.binary_dilation(fg, iterations=6)
        inside = ndimage.binary_erosion(fg, iterations=2)
        bright, dark = line_profiles(im, True), line_profiles(im, False)
        bright_p.append(bright.mean(0))
        dark_p.append(dark.mean(0))
        area = max(fg.sum(), 1)
        log = ndimage.gaussian_laplace(t, 1.0)
        bg = np.median(t[far]) if far.any() else np.median(t)
        hp2 = t - ndimage.gaussian_filter(t, 2)
        rows.append(
            {
                "cell_cover": fg.mean(),
                "background_std": t[far].std() if far.sum() > 100 else np.nan,
                "cell_level": t[inside].mean() - bg if inside.any() else np.nan,
                "cell_texture_std": hp2[inside].std() if inside.any() else np.nan,
                "dark_spots_per_1000px": 1000 * ((log > 12) & inside).sum() / area,
                "bright_spots_per_1000px": 1000 * ((log < -12) & inside).sum() / area,
                "bright_line_px_per_1000px": 1000 * len(bright) / area,
                "dark_line_px_per_1000px": 1000 * len(dark) / area,
            }
        )
    keys = rows[0].keys()
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    bright_mean, dark_mean = np.mean(bright_p, 0), np.mean(dark_p, 0)
    out["bright_line"] = profile_numbers(bright_mean)
    out["dark_line"] = profile_numbers(dark_mean)
    out["bright_profile"] = [round(float(v), 2) for v in bright_mean]
    out["dark_profile"] = [round(float(v), 2) for v in dark_mean]
    return out
