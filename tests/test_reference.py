"""docs/reference.md is generated from the models, kept current, and the generator walks any model shape."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field, SecretStr

from engine import reference
from engine.config.channel import Channel
from engine.config.model import Model
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reference.md"


def test_committed_reference_is_current() -> None:
    current = DOC.read_text() if DOC.exists() else ""
    assert current == reference.render(), (
        f"docs/reference.md is not current with the settings and channel models: run `make reference` "
        f"({reference.COMMAND}) and commit the result"
    )


def reachable_models(model: type[BaseModel]) -> set[type[BaseModel]]:
    """Every model a model composes, found independently of the generator's own walk."""
    found: set[type[BaseModel]] = set()

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp not in found:
                found.add(tp)
                for f in tp.model_fields.values():
                    visit(f.annotation)
            return
        for arg in get_args(tp):
            visit(arg)

    visit(model)
    return found


def test_every_setting_and_channel_key_is_described_and_listed() -> None:
    doc = reference.render()
    missing, undescribed = [], []
    for model in reachable_models(Settings) | reachable_models(Channel):
        for name, info in model.model_fields.items():
            if not info.description:
                undescribed.append(f"{model.__name__}.{name}")
            key = info.alias or name  # a key the channel file spells otherwise (`from:` of business hours)
            if not re.search(rf"\| `(?:[^`|]*\.)?{re.escape(key)}` \|", doc):
                missing.append(f"{model.__name__}.{name}")
    assert undescribed == [], "every field needs a description (it is the reference's text)"
    assert missing == []
    for name in ("INTERLINK_LAB_RESULTS_PORT", "INTERLINK_ADT_PORT", "INTERLINK_MLLP_HOST", "INTERLINK_FHIR_BASE_URL"):
        assert f"| `{name}` |" in doc


# -- the walk, on models of every shape ---------------------------------------------------------------------


class Colour(StrEnum):
    red = "red"
    blue = "blue"


class Inner(Model):
    """Inner part."""

    depth_m: float = Field(1.5, gt=0, description="How deep.")


class Cat(Model):
    """A cat."""

    kind: Literal["cat"] = Field(description="Kind.")
    lives: int = Field(9, ge=1, le=9, description="Lives left.")
    inner: Inner | None = Field(None, description="Optional part.")


class Dog(Model):
    """A dog."""

    kind: Literal["dog"] = Field(description="Kind.")
    password: SecretStr = Field(description="Never shown.")


Pet = Annotated[Cat | Dog, Field(discriminator="kind")]


class Toy(Model):
    name: str = Field(description="Toy name.", pattern=r"^[a-z]+$")
    inner: Inner = Field(default_factory=Inner, description="Always there.")
    pets: list[Pet] = Field(default_factory=list, description="Pets.", min_length=0)
    best: Pet | None = Field(None, description="The best one.")
    colour: Colour = Field(Colour.red, description="A colour.")
    mode: int | Literal["auto"] = Field("auto", description="Count or auto.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    rooms: list[Inner] = Field(default_factory=list, description="Rooms.", min_length=1)


def rows_by_key(rows: list[reference.Row]) -> dict[str, tuple[str, str, str, str]]:
    return {r.key: (r.type, r.default, r.description, r.env) for r in rows}


def test_walk_flattens_nested_models_and_names_environment_variables() -> None:
    walker = reference.Walker(env=True)
    rows = rows_by_key(list(walker.rows(Toy)))
    assert rows["name"] == ("string (matching `^[a-z]+$`)", "**required**", "Toy name.", "INTERLINK_NAME")
    assert rows["inner"] == ("object", "", "Always there.", "")
    assert rows["inner.depth_m"] == ("number (> 0)", "`1.5`", "How deep.", "INTERLINK_INNER__DEPTH_M")
    assert rows["colour"] == ("one of `red`, `blue`", "`red`", "A colour.", "INTERLINK_COLOUR")
    assert rows["mode"] == ("integer or `auto`", "`auto`", "Count or auto.", "INTERLINK_MODE")
    assert rows["labels"] == ("map of string to string", "`{}`", "Labels.", "")
    assert rows["rooms"][0] == "list of objects (length ≥ 1)"
    assert rows["rooms[].depth_m"][:2] == ("number (> 0)", "`1.5`")


def test_walk_gives_each_union_variant_a_section_once() -> None:
    walker = reference.Walker()
    rows = rows_by_key(list(walker.rows(Toy)))
    assert rows["pets"][0] == "list of: one of [`cat`](#pets-cat), [`dog`](#pets-dog)"
    assert rows["best"][:2] == ("one of [`cat`](#pets-cat), [`dog`](#pets-dog)", "not set")
    assert [(s.anchor, s.title, s.intro) for s in walker.sections] == [
        ("pets-cat", "`pets[]` with `kind: cat`", "A cat."),
        ("pets-dog", "`pets[]` with `kind: dog`", "A dog."),
    ]
    cat, dog = (rows_by_key(s.rows) for s in walker.sections)
    assert list(cat) == ["kind", "lives", "inner", "inner.depth_m"]
    assert cat["kind"][:2] == ("`cat`", "**required**")
    assert cat["lives"][:2] == ("integer (≥ 1, ≤ 9)", "`9`")
    assert cat["inner"][:2] == ("object, optional", "not set")
    assert dog["password"][:2] == ("secret string", "**required**")


def test_check_option_reports_a_stale_file(tmp_path: Path) -> None:
    out = tmp_path / "reference.md"
    out.write_text("old\n")
    assert reference.main(["--output", str(out), "--check"]) == 1
    assert reference.main(["--output", str(out)]) == 0
    assert reference.main(["--output", str(out), "--check"]) == 0
    assert out.read_text() == reference.render()
