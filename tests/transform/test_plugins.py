"""Site functions: an installed package's ``interlink.functions`` entry point, loaded only when the settings
name it, checked like the built-ins, and refused at start-up when it is missing or clashes."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import hl7v2
from engine.errors import ConfigError
from engine.settings import Settings
from engine.transform import functions, plugins
from engine.transform.authority import Identifiers
from engine.transform.mappingset import load_site_mappings
from tests.integration.messages import adt

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def install(root: Path, module: str, entry: str, body: str) -> None:
    """A package installed the way pip leaves one: the module and its dist-info with an entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{entry} = {module}:FUNCTIONS\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    before = dict(functions.REGISTRY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    functions.REGISTRY.clear()
    functions.REGISTRY.update(before)
    plugins._loaded.clear()
    for name in [m for m in sys.modules if m.startswith("sitefns")]:
        del sys.modules[name]


def overlay(root: Path, fn: str) -> Path:
    seg = root / "overlay" / "hl7v2" / "segments"
    seg.mkdir(parents=True)
    (seg / "PID-Patient.yaml").write_text(
        "segment: PID\ntarget: Patient\ndescription: Site rule.\nmerge: true\n"
        f"rules:\n  gender: {{from: PID-8, fn: {fn}}}\n"
    )
    return root / "overlay"


FUNCS = """\
    from engine.transform.functions import Function

    def _site_gender(run, value):
        return {"1": "male", "2": "female"}.get(value, "other")

    FUNCTIONS = [Function("site_gender", _site_gender, "primitive", "code", "Site sex codes to FHIR gender.")]
"""


def test_a_named_entry_point_adds_its_functions_to_the_registry(site: Path) -> None:
    install(site, "sitefns_a", "northwind", FUNCS)
    settings = Settings(mappings_dir=MAPPINGS, mapping_overlays=[overlay(site, "site_gender")],
                        site_functions=["northwind"])  # fmt: skip
    bundle = load_site_mappings(settings).transform(
        hl7v2.Message.parse(hl7v2.decode(adt("P1", "A08"))),
        validation="full",
        identifiers=Identifiers(authority="HOSP"),
    )
    assert bundle["entry"][0]["resource"]["gender"] == "other"  # the site's numeric codes: PID-8 "M" is not one


def test_an_installed_entry_point_is_not_loaded_unless_named(site: Path) -> None:
    install(site, "sitefns_b", "northwind", FUNCS)
    with pytest.raises(ConfigError, match="site_gender"):
        load_site_mappings(Settings(mappings_dir=MAPPINGS, mapping_overlays=[overlay(site, "site_gender")]))


@pytest.mark.parametrize(
    ("name", "body", "says"),
    [
        ("missing", FUNCS, "no installed package declares 'missing'"),
        ("northwind", FUNCS.replace('"site_gender"', '"date"'), "'date' is already registered"),
        ("northwind", "FUNCTIONS = ['not a function']\n", "must be a list"),
        ("northwind", "import not_installed_anywhere\n", "cannot be loaded (ModuleNotFoundError)"),
    ],
)
def test_a_bad_plug_in_is_refused_at_start_up(site: Path, name: str, body: str, says: str) -> None:
    install(site, "sitefns_c", "northwind", body)
    with pytest.raises(ConfigError, match="site_functions") as err:
        load_site_mappings(Settings(mappings_dir=MAPPINGS, site_functions=[name]))
    assert says in str(err.value)
