"""The configuration reference (``docs/reference.md``), generated from the pydantic models.

Contract: :func:`render` returns the whole document; it is a pure function of the models (the engine's
``Settings`` and the channel's ``Channel`` with everything they compose) and of the example channel files
(for the environment variables those files read). Nothing is listed by hand: the walk follows fields,
nested models, lists and maps of them, discriminated unions (one section per variant), enums, ``Literal``
choices and the constraints pydantic records (``ge``, ``max_length``, ``pattern`` …), so a field added to
any model appears with its type, default and description on the next run.

``python -m engine.reference --output docs/reference.md`` (``make reference``) writes the file;
``--check`` exits 1 when the file on disk differs from what the models say.
"""

from __future__ import annotations

import argparse
import enum
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

COMMAND = "python -m engine.reference --output docs/reference.md"
ENV_PREFIX = "INTERLINK_"
NOT_SET = "not set"

_SCALARS: dict[object, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret string",
}
_NAMED = {  # pydantic's own types, by class name (their classes differ between pydantic versions)
    "IPvAnyNetwork": "IP network (CIDR)",
    "IPvAnyAddress": "IP address",
    "IPvAnyInterface": "IP interface",
    "AnyUrl": "URL",
    "HttpUrl": "URL",
}


@dataclass
class Row:
    key: str
    type: str
    default: str
    description: str
    env: str = ""


@dataclass
class Section:
    """One table: a model's fields flattened below ``path`` (a variant of a union gets its own)."""

    anchor: str
    title: str
    intro: str
    rows: list[Row] = field(default_factory=list)


# -- types ------------------------------------------------------------------------------------------------


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _unwrap(tp: Any) -> tuple[Any, list[Any], bool]:
    """Strip ``Annotated`` (keeping its metadata) and ``None`` from unions: (type, metadata, optional)."""
    meta: list[Any] = []
    optional = False
    while True:
        if get_origin(tp) is Annotated:
            tp, *extra = get_args(tp)
            meta.extend(extra)
            continue
        if _is_union(tp):
            args = [a for a in get_args(tp) if a is not type(None)]
            optional = optional or len(args) < len(get_args(tp))
            if len(args) == 1:
                tp = args[0]
                continue
            tp = Union[tuple(args)]  # noqa: UP007 (a runtime union of computed members)
        return tp, meta, optional


def _discriminator(meta: list[Any], info: FieldInfo | None = None) -> str | None:
    if info is not None and isinstance(info.discriminator, str):
        return info.discriminator
    for m in meta:
        if isinstance(m, FieldInfo) and isinstance(m.discriminator, str):
            return m.discriminator
    return None


def _variants(tp: Any) -> list[type[BaseModel]] | None:
    """The models of a union made only of models (or a single model), else None."""
    members = [_unwrap(a)[0] for a in get_args(tp)] if _is_union(tp) else [tp]
    return members if members and all(_is_model(m) for m in members) else None


def _constraints(meta: list[Any]) -> list[str]:
    out: list[str] = []
    for m in meta:
        if isinstance(m, FieldInfo):
            continue
        for attr, fmt in (
            ("gt", "> {}"),
            ("ge", "≥ {}"),
            ("lt", "< {}"),
            ("le", "≤ {}"),
            ("min_length", "length ≥ {}"),
            ("max_length", "length ≤ {}"),
            ("pattern", "matching `{}`"),
        ):
            value = getattr(m, attr, None)
            if value is not None and not (attr == "min_length" and value == 0):
                text = fmt.format(value)
                if text not in out:
                    out.append(text)
    return out


def _choices(values: list[Any]) -> str:
    if len(values) == 1:
        return f"`{_plain(values[0])}`"
    return "one of " + ", ".join(f"`{_plain(v)}`" for v in values)


def type_name(tp: Any, meta: list[Any] | None = None) -> str:
    """A reader's name for a type: ``integer ≥ 1``, ``one of `a`, `b```, ``list of string`` …"""
    tp, inner_meta, _ = _unwrap(tp)
    meta = [*(meta or []), *inner_meta]
    if get_origin(tp) is Literal:
        name = _choices(list(get_args(tp)))
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        name = _choices([m.value for m in tp])
    elif _is_union(tp):
        parts = [type_name(a) for a in get_args(tp)]
        name = " or ".join(parts)
    elif get_origin(tp) in (list, tuple, set, frozenset):
        (item, *_) = get_args(tp) or (Any,)
        name = f"list of {type_name(item)}"
    elif get_origin(tp) is dict:
        key, value = get_args(tp) or (Any, Any)
        name = f"map of {type_name(key)} to {type_name(value)}"
    elif _is_model(tp):
        name = "object"
    elif tp in _SCALARS:
        name = _SCALARS[tp]
    else:
        name = _NAMED.get(getattr(tp, "__name__", ""), getattr(tp, "__name__", str(tp)))
    limits = _constraints(meta)
    return f"{name} ({', '.join(limits)})" if limits else name


# -- values -----------------------------------------------------------------------------------------------


def _plain(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def default_text(info: FieldInfo) -> str:
    """The default as a reader writes it in YAML; ``**required**`` when there is none."""
    if info.is_required():
        return "**required**"
    try:
        value = info.get_default(call_default_factory=True)
    except TypeError:  # a factory that needs the other fields' values
        return "computed"
    if value is None:
        return NOT_SET
    if isinstance(value, BaseModel):
        return ""  # each of its fields has a row of its own
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, list | tuple | set | frozenset):
        return "`[]`" if not value else "`[" + ", ".join(_plain(v) for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`" if not value else "`{" + ", ".join(f"{k}: {_plain(v)}" for k, v in value.items()) + "}`"
    text = _plain(value)
    return f"`{text}`" if text else '`""`'


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# -- the walk ---------------------------------------------------------------------------------------------


class Walker:
    """Flattens models into rows; each variant of a discriminated union becomes a section of its own."""

    def __init__(self, env: bool = False) -> None:
        self.env = env
        self.sections: list[Section] = []
        self._seen: dict[type[BaseModel], str] = {}

    def rows(self, model: type[BaseModel], prefix: str = "", env_path: tuple[str, ...] | None = ()) -> Iterator[Row]:
        """Rows of ``model``'s fields under ``prefix``; ``env_path`` None: no environment names."""
        yield from self._rows(model, prefix, env_path, "")

    def _rows(
        self, model: type[BaseModel], prefix: str, env_path: tuple[str, ...] | None, scope: str, disc: str | None = None
    ) -> Iterator[Row]:
        """``scope``: where ``prefix`` itself sits in the file (names the sections of nested unions)."""
        for name, info in _ordered(model, disc):
            yield from self._field(name, info, prefix, env_path, scope)

    def _field(
        self, name: str, info: FieldInfo, prefix: str, env_path: tuple[str, ...] | None, scope: str
    ) -> Iterator[Row]:
        key = f"{prefix}{info.alias or name}"
        where = f"{scope}{key}"
        tp, meta, optional = _unwrap(info.annotation)
        meta = [*info.metadata, *meta]
        description = info.description or ""
        default = default_text(info)
        env = ENV_PREFIX + "__".join((*env_path, name)).upper() if self.env and env_path is not None else ""
        disc = _discriminator(meta, info)
        variants = _variants(tp)
        if variants and (disc or len(variants) > 1):
            yield Row(key, self._union(where, variants, disc), default, description)
            return
        if _is_model(tp):
            yield Row(key, "object" + (", optional" if optional else ""), default, description)
            yield from self._rows(tp, f"{key}.", None if env_path is None else (*env_path, name), scope)
            return
        origin = get_origin(tp)
        if origin in (list, tuple, set, frozenset) or origin is dict:
            args = get_args(tp)
            item_tp, item_meta, _ = _unwrap(args[-1] if args else Any)
            item_disc = _discriminator(item_meta)
            item_variants = _variants(item_tp)
            joint = "[]" if origin is not dict else ".<name>"
            what = "list" if origin is not dict else "map"
            if item_variants and (item_disc or len(item_variants) > 1):
                kinds = self._union(f"{where}{joint}", item_variants, item_disc)
                yield Row(key, f"{what} of: {kinds}" + _suffix(meta), default, description)
                return
            if item_variants:
                yield Row(key, f"{what} of objects" + _suffix(meta), default, description)
                yield from self._rows(item_variants[0], f"{key}{joint}.", None, scope)
                return
        yield Row(key, type_name(tp, meta), default, description, env if self._settable(tp) else "")

    @staticmethod
    def _settable(tp: Any) -> bool:
        """Whether an environment variable (a string) can set the field."""
        return get_origin(tp) not in (list, tuple, set, frozenset, dict) and not _is_model(tp)

    def _union(self, path: str, variants: list[type[BaseModel]], disc: str | None) -> str:
        links = []
        for model in variants:
            tag = _tag(model, disc)
            if model not in self._seen:
                anchor = re.sub(r"[^a-z0-9]+", "-", f"{path}-{tag}".lower()).strip("-")
                self._seen[model] = anchor
                title = f"`{path}` with `{disc}: {tag}`" if disc else f"`{path}`: {model.__name__}"
                section = Section(anchor, title, _doc(model))
                self.sections.append(section)
                section.rows.extend(self._rows(model, "", None, f"{path}.", disc))
            links.append(f"[`{tag}`](#{self._seen[model]})")
        return "one of " + ", ".join(links)


def _ordered(model: type[BaseModel], disc: str | None) -> list[tuple[str, FieldInfo]]:
    """The discriminator first, then required keys, then the rest, each in declaration order."""
    items = list(model.model_fields.items())
    return sorted(items, key=lambda kv: (kv[0] != disc, not kv[1].is_required()))


def _suffix(meta: list[Any]) -> str:
    limits = _constraints(meta)
    return f" ({', '.join(limits)})" if limits else ""


def _tag(model: type[BaseModel], disc: str | None) -> str:
    if disc and disc in model.model_fields:
        args = get_args(_unwrap(model.model_fields[disc].annotation)[0])
        if args:
            return _plain(args[0])
    return model.__name__


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())


def table(rows: list[Row], env: bool = False) -> str:
    if env:
        head = "| key | environment | type | default | description |\n| --- | --- | --- | --- | --- |\n"
        body = "".join(
            f"| `{r.key}` | {f'`{r.env}`' if r.env else ''} | {_cell(r.type)} | {_cell(r.default)} | "
            f"{_cell(r.description)} |\n"
            for r in rows
        )
    else:
        head = "| key | type | default | description |\n| --- | --- | --- | --- |\n"
        body = "".join(f"| `{r.key}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.description)} |\n" for r in rows)
    return head + body


# -- environment variables of the example channels --------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def channel_env(channels_dir: Path) -> dict[str, dict[str, Any]]:
    """Every ``${VAR}`` and ``when: {env_set|env_unset: VAR}`` in the channel files: default and uses."""
    found: dict[str, dict[str, Any]] = {}

    def use(var: str, default: str | None, file: str, what: str) -> None:
        entry = found.setdefault(var, {"default": None, "uses": {}})
        if default is not None and entry["default"] is None:
            entry["default"] = default
        uses = entry["uses"].setdefault(file, [])
        if what not in uses:
            uses.append(what)

    def walk(node: Any, path: str, file: str) -> None:
        if isinstance(node, dict):
            name = node.get("name") if isinstance(node.get("name"), str) else None
            for k, v in node.items():
                if k == "when" and isinstance(v, dict):
                    for cond, var in v.items():
                        if isinstance(var, str):
                            state = "set" if cond == "env_set" else "unset"
                            use(var, None, file, f"destination `{name}` is used when {state}")
                    continue
                walk(v, f"{path}.{k}" if path else str(k), file)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", file)
        elif isinstance(node, str):
            for m in _ENV_REF.finditer(node):
                use(m.group(1), m.group(2), file, f"`{path}`")

    for f in sorted([*channels_dir.glob("*.yaml"), *channels_dir.glob("*.yml")]):
        walk(yaml.safe_load(f.read_text()), "", f.name)
    return dict(sorted(found.items()))


def env_table(env: dict[str, dict[str, Any]]) -> str:
    rows = []
    for var, e in env.items():
        default = f"`{e['default']}`" if e["default"] else NOT_SET
        uses = "; ".join(f"`{file}`: {', '.join(what)}" for file, what in e["uses"].items())
        rows.append(f"| `{var}` | {default} | {_cell(uses)} |\n")
    return "| variable | default | read by |\n| --- | --- | --- |\n" + "".join(rows)


# -- the document -----------------------------------------------------------------------------------------


def render(channels_dir: Path | None = None) -> str:
    from engine.config.channel import Channel, EnvCondition
    from engine.settings import Settings

    root = Path(__file__).resolve().parents[1]
    channels_dir = channels_dir or root / "channels"
    out = [
        "# Configuration reference\n",
        f"Generated from the pydantic models by `make reference` (`{COMMAND}`); do not edit by hand. "
        "A test fails when this file is not current.\n",
        "Types: *string*, *integer*, *number*, *boolean*, *path* (relative to the working folder); a "
        "*secret string* is never logged or shown. *not set* means the key may be left out.\n",
    ]

    walker = Walker(env=True)
    rows = list(walker.rows(Settings))
    out += [
        "## Engine settings\n",
        "`config/engine.yaml` (or the file given by `--config` or `INTERLINK_CONFIG`). Every key can be "
        "overridden by its environment variable: `INTERLINK_` and the key in upper case, nested keys joined "
        "by `__`.\n",
        table(rows, env=True),
    ]
    for s in walker.sections:
        out += [f'<a id="{s.anchor}"></a>\n\n### {s.title}\n', f"{s.intro}\n" if s.intro else "", table(s.rows)]

    env = channel_env(channels_dir)
    if env:
        out += [
            "## Environment variables of the example channels\n",
            "The files in `channels/` read these with `${VAR:-default}` (any channel file may read any "
            "variable this way) and turn destinations on or off with `when:`.\n",
            env_table(env),
        ]

    walker = Walker()
    rows = list(walker.rows(Channel))
    out += [
        "## Channel files\n",
        f"One YAML file per channel in `channels/`. {_doc(Channel)} `${{VAR}}` and `${{VAR:-default}}` are "
        "replaced from the environment.\n",
        table(rows),
    ]
    for s in walker.sections:
        out += [f'<a id="{s.anchor}"></a>\n\n### {s.title}\n', f"{s.intro}\n" if s.intro else "", table(s.rows)]
    out += [
        "### `destinations[].when`\n",
        f"{_doc(EnvCondition)} Any destination may carry it; a destination whose condition does not hold is "
        "dropped before its other keys are checked.\n",
        table(list(Walker().rows(EnvCondition, "when."))),
    ]
    return "\n".join(part for part in out if part)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.reference", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, help="write here instead of standard output")
    parser.add_argument("--check", action="store_true", help="exit 1 when --output is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if args.output is None:
            parser.error("--check needs --output")
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is not current: run `make reference` ({COMMAND})", file=sys.stderr)
            return 1
        return 0
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
