"""Settings files: schema checks and `defaults` (a file building on others)."""

from dataclasses import dataclass, field

import pytest

from colordiff.config import ConfigError, load_config


@dataclass
class Inner:
    size: int = 256
    crop: str = "center"


@dataclass
class Settings:
    name: str = "???"
    steps: int = 50
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_defaults_are_merged_under_the_file_relative_to_it(tmp_path):
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "base.yaml").write_text("name: base\nsteps: 20\ntags: [a, b]\ninner: {size: 64}\n")
    (tmp_path / "sets" / "crop.yaml").write_text("inner: {crop: stretch}\nsteps: 30\n")
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "row.yaml").write_text("defaults: [../sets/base.yaml, ../sets/crop.yaml]\ntags: [c]\n")
    config = load_config(Settings, [tmp_path / "rows" / "row.yaml"], ["inner.size=32"])
    # later defaults win over earlier ones, the file over its defaults (lists replaced), overrides over all
    assert config == Settings(name="base", steps=30, tags=["c"], inner=Inner(size=32, crop="stretch"))
    (tmp_path / "chain.yaml").write_text("defaults: rows/row.yaml\nname: chain\n")  # one path, and nested defaults
    assert load_config(Settings, [tmp_path / "chain.yaml"]) == Settings("chain", 30, ["c"], Inner(64, "stretch"))


def test_defaults_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\nname: x\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: includes itself through its defaults"):
        load_config(Settings, [tmp_path / "a.yaml"])
    (tmp_path / "c.yaml").write_text("defaults: [missing.yaml]\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found \(in the defaults of .*c\.yaml\)"):
        load_config(Settings, [tmp_path / "c.yaml"])
    (tmp_path / "d.yaml").write_text("defaults: 3\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: defaults must be a list of YAML file paths"):
        load_config(Settings, [tmp_path / "d.yaml"])
    (tmp_path / "e.yaml").write_text("defaults: [f.yaml]\n")
    (tmp_path / "f.yaml").write_text("nmae: typo\n")
    with pytest.raises(ConfigError, match=r"e\.yaml: .*nmae"):  # an unknown key in a default still fails loudly
        load_config(Settings, [tmp_path / "e.yaml"])
