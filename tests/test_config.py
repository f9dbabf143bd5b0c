import pytest

from livecellseg.config import load_params, parse_params
from livecellseg.errors import ConfigError
from tests.helpers import ROOT


def test_project_params_load():
    p = load_params(ROOT / "params.yaml")
    assert p.tile.grid == 7 and p.tile.window == 3 and p.tile.min_visible == 0.3
    assert p.split.fractions() == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert p.data.source in ("sample", "livecell")


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("tile", "colour", 1, "unknown key 'tile.colour'"),
        (
            "data",
            "source",
            "s3",
            "bad value 's3' for 'data.source': allowed ['sample', 'livecell']",
        ),
        ("tile", "grid", "7", "'tile.grid' must be an integer"),
        ("tile", "min_visible", 1.5, "'tile.min_visible': must be a fraction in (0, 1]"),
        ("tile", "window", 9, "'tile.window': must be an integer in [1, tile.grid=7]"),
        ("split", "val", 0.5, "fractions summing to 1"),
        ("sample", "cell_lines", ["A172", "HeLa"], "bad value 'HeLa' for 'sample.cell_lines[1]'"),
        ("subset", "n_images", True, "'subset.n_images' must be an integer"),
        ("sample", "cell_lines", "A172", "'sample.cell_lines' must be a list"),
        ("model", "anchor_sizes", [8, 16, 32], "'model.anchor_sizes': must be 5 sizes > 0"),
        ("model", "anchor_sizes", [8, 16, 0, 64, 128], "'model.anchor_sizes': must be 5 sizes"),
        ("model", "anchor_ratios", [0.25, 0.5, 1, 2, 4], "'model.anchor_ratios': must be 3"),
        ("model", "image_std", [0.05, 0.05, 0], "'model.image_std': must be 3 numbers"),
        ("model", "image_mean", [128, 128, 128], "'model.image_mean': must be 3 numbers"),
        ("custom", "anchor_scales", [1, 2], "'custom.anchor_scales': must be 3 factors"),
    ],
)
def test_bad_values_name_the_key(params_dict, section, key, value, message):
    params_dict[section][key] = value
    with pytest.raises(ConfigError) as e:
        parse_params(params_dict)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_unknown_sections(params_dict):
    del params_dict["tile"]["min_visible"]
    with pytest.raises(ConfigError, match="missing key 'tile.min_visible'"):
        parse_params(params_dict)
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        parse_params({"trian": {}})


def test_params_are_frozen(params_dict):
    p = parse_params(params_dict)
    with pytest.raises(AttributeError):
        p.tile.grid = 5


def test_unreadable_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("tile: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_workers(params_dict):
    params_dict["workers"] = -1
    with pytest.raises(ConfigError, match="bad value for 'workers'"):
        parse_params(params_dict)
    params_dict["workers"] = 0
    assert parse_params(params_dict).n_workers() >= 1
