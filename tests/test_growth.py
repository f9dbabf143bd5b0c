"""Growth curves: LIVECell names parsed, doubling times recovered from constructed series."""

import numpy as np
import pytest

from livecellseg.errors import LivecellsegError
from livecellseg.growth import TimePoint, doubling_time, parse_name


def test_a_livecell_name():
    assert parse_name("SHSY5Y_Phase_B10_1_01d12h00m_1.tif") == TimePoint(
        "SHSY5Y", "B10", "1_1", 36.0
    )
    assert parse_name("some/dir/A172_Phase_C7_2_00d04h30m_4.tif").hours == 4.5


@pytest.mark.parametrize(
    "name",
    ["SHSY5Y_B10_1_01d12h00m_1.tif", "A172_Phase_C7_1_1d_1.tif", "A172_Phase_C7_1_00d04h00m_1.png"],
)
def test_a_name_it_cannot_parse_is_a_one_line_error_naming_the_file(name):
    with pytest.raises(LivecellsegError, match=name.replace(".", r"\.") + ": name does not follow"):
        parse_name(name)


def test_another_naming_scheme_by_pattern():
    pattern = r"(?P<line>\w+?)-(?P<well>[A-H]\d+)-s(?P<field>\d+)-t(?P<hours>[\d.]+)h\.tif"
    assert parse_name("HeLa-D4-s2-t7.5h.tif", pattern) == TimePoint("HeLa", "D4", "2", 7.5)
    with pytest.raises(LivecellsegError, match="names no group hours"):
        parse_name("x.tif", r"(?P<well>\w+)\.tif")


def series(doubling: float, times, positions=4, noise=0.05, n0=40, seed=0, plateau=None):
    rng = np.random.default_rng(seed)
    t = np.repeat(np.asarray(times, float), positions)
    n = n0 * 2 ** (t / doubling)
    if plateau is not None:
        n = np.minimum(n, plateau)
    return t, np.round(n * np.exp(rng.normal(0, noise, len(t))))


@pytest.mark.parametrize("doubling", [18.0, 30.0])
def test_a_known_doubling_time_is_recovered(doubling):
    t, n = series(doubling, range(0, 73, 12))
    fit = doubling_time(t, n)
    assert fit.estimable and fit.hours == pytest.approx(doubling, rel=0.05)
    assert fit.ci95[0] < doubling < fit.ci95[1] and fit.r2 > 0.95
    assert (fit.start_h, fit.end_h, fit.points) == (0, 72, len(t))


def test_the_fit_stops_where_the_culture_is_confluent():
    t, n = series(20.0, range(0, 121, 12), plateau=40 * 2 ** (60 / 20))
    fit = doubling_time(t, n)
    assert fit.hours == pytest.approx(20.0, rel=0.1) and fit.end_h <= 72


@pytest.mark.parametrize(
    ("times", "counts", "why"),
    [
        ([0, 0, 12, 12, 24, 24, 36, 36], [50, 46, 49, 51, 50, 53, 47, 55], "no growth after 0 h"),
        ([0, 0, 24, 24, 48, 48], [20, 60, 25, 70, 30, 80], "no significant growth"),
        ([0, 12, 24, 36], [80, 60, 40, 20], "no growth after 0 h"),
        ([0, 12], [10, 20], "2 time points"),
        ([0, 12, 24], [0, 0, 5], "1 time points"),
    ],
)
def test_a_flat_noisy_shrinking_or_short_series_is_not_estimable(times, counts, why):
    fit = doubling_time(np.array(times), np.array(counts))
    assert not fit.estimable and fit.hours is None and fit.ci95 is None
    assert fit.reason.startswith("not estimable") and why in fit.reason
