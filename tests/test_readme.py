"""The README stays true: its set-up commands and its table of settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from service.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_gives_the_two_setup_commands() -> None:
    assert "pip install -e . && yipanqi demo --once" in README
    assert "pip install -e '.[test]' && pytest" in README


def test_readme_documents_every_setting() -> None:
    missing = []
    for name, field in Settings.model_fields.items():
        variable = f"YIPANQI_{name.upper()}"
        nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        if nested:
            variable += "__DAYS"  # deadlines: documented as `YIPANQI_DEADLINE_X__DAYS` / `__UNIT`
        if f"`{variable}`" not in README:
            missing.append(variable)
    assert missing == [], f"add these settings to the README's configuration table: {missing}"
