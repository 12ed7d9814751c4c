"""The README's configuration table is generated from the settings class and kept in sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from handwriting_ai.cli import main
from handwriting_ai.settings import Settings, SettingsError, load_settings
from handwriting_ai.settings_reference import MEANINGS, render_into, table, variables

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_table_is_the_generated_one() -> None:
    text = README.read_text()
    assert render_into(text) == text, "run: digits settings-reference --write README.md"
    assert main(["settings-reference", "--check", str(README)]) == 0


def test_every_setting_has_a_meaning_and_every_meaning_a_setting() -> None:
    names = [name for name, _ in variables()]
    assert sorted(names) == sorted(MEANINGS)
    assert len(names) == len(set(names))
    assert "SECURITY__ADMIN_KEY" in names
    assert "REDIS_URL" in names


def test_every_listed_variable_is_read_by_the_settings() -> None:
    # A name in the table that the loader ignored would be a lie in the docs: each one either
    # changes the settings or is refused by name.
    for name, _ in variables():
        try:
            settings = load_settings({name: "x-1"})
        except SettingsError as exc:
            refused = str(exc)
        else:
            refused = ""
            assert settings != Settings(), name
        assert not refused or name in refused


def test_a_drifted_copy_fails_the_check(tmp_path: Path) -> None:
    copy = tmp_path / "README.md"
    copy.write_text(
        README.read_text().replace("| `APP__PORT` | `8081` |", "| `APP__PORT` | `80` |")
    )
    assert main(["settings-reference", "--check", str(copy)]) == 1
    assert main(["settings-reference", "--write", str(copy)]) == 0
    assert copy.read_text() == README.read_text()


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="markers"):
        render_into("# no table here\n")
    assert table().startswith("| variable | default | meaning |")
