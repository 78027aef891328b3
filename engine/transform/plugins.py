"""Site functions: the declared plug-in point of the closed function registry.

A site that needs a conversion no built-in function does ships it as an installed Python package that
declares an entry point in the group ``interlink.functions``::

    [project.entry-points."interlink.functions"]
    northwind = "northwind_interlink.functions:FUNCTIONS"

whose object is an iterable of :class:`~engine.transform.functions.Function` (name, implementation,
input, FHIR output type, description, params) — the same contract as the built-ins, so the compiler
checks every rule that calls one before a message arrives. Nothing is loaded unless the engine settings
name the entry point (``site_functions: [northwind]``): installing a package never changes what maps may
call. A name that is not installed, an object that is not a list of functions, or a function name that is
already taken (built-in or another plug-in) is a ConfigError at start-up. Maps never name code: they name
registered functions only, and no text from a message is ever evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import entry_points

from engine.errors import ConfigError
from engine.transform.functions import REGISTRY, Function

GROUP = "interlink.functions"

_loaded: dict[str, tuple[str, ...]] = {}  # entry point → the function names it registered


def load_site_functions(names: Iterable[str]) -> None:
    """Register the functions of the named ``interlink.functions`` entry points (once per process)."""
    wanted = [n for n in names if n not in _loaded]
    if not wanted:
        return  # no scan of the installed packages' metadata at every start-up
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    for name in wanted:
        ep = found.get(name)
        if ep is None:
            raise ConfigError(f"site_functions: no installed package declares {name!r} in the {GROUP} entry points")
        try:
            functions = list(ep.load())
        except Exception as exc:  # an import error in site code names the entry point, not a traceback
            raise ConfigError(f"site_functions: {name}: cannot be loaded ({exc.__class__.__name__})") from None
        if not functions or not all(isinstance(f, Function) for f in functions):
            raise ConfigError(f"site_functions: {name}: must be a list of engine.transform.functions.Function")
        for f in functions:
            if f.name in REGISTRY:
                raise ConfigError(f"site_functions: {name}: function {f.name!r} is already registered")
        for f in functions:
            REGISTRY[f.name] = f
        _loaded[name] = tuple(f.name for f in functions)
