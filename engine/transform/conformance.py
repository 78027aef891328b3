"""Conformance against a peer: our bundles compared with the peer's expected bundles on key facts.

    report = compare_corpus(Path("../shared/corpus/hl7v2"), load_mappings(Path("mappings")))
    print(report.summary())            # agreement per message type and overall: counts only, no values
    report.write(Path("conformance-report.md"))   # every disagreement, with both sides' values

The corpus folder holds HL7 v2 messages and, beside some of them, a peer's expected output
``<name>.expected.json`` (the Microsoft FHIR-Converter's snapshots; see the corpus README). Every message
is mapped as a channel would map it: the message map chosen from MSH-9, an identifier without assigning
authority taking the sending facility MSH-4 as its authority (else ``CORPUS``), full FHIR validation.

A *fact* is one comparable statement about the output (:data:`FACTS`): resource counts per type; Patient
identifiers, names, birthDate, gender, address, telecom; Encounter class, status, period, location count;
Observation code, value, unit, status, interpretation, reference range; DiagnosticReport status and
result count; Immunization vaccine, date, lot; Appointment status, start; DocumentReference content;
ServiceRequest code, status; Condition code; AllergyIntolerance code, reaction. Resources of a type are
paired by their code (in order), a resource one side lacks makes each of its facts a disagreement, and a
message we refuse disagrees on every fact of the peer's bundle. Date-times compare as instants (the peer
renders some in other offsets); identifiers, names, addresses and telecoms compare as "ours is a subset
of theirs" (the peer merges those of NK1/IN1/GT1 into the Patient); systems are not compared (the peer
writes placeholder URLs for names it cannot map).

A disagreement the peer causes by departing from the IG is listed as a *departure* (message glob, fact
glob, the IG rule): it is reported apart and left out of the agreement figure. The fact glob may name the
pairing key of the resources it explains (``Observation(autopsy).*``: the peer's Observation coded
``autopsy``), so that a departure does not hide other disagreements of that type in the same message. The list lives in
``docs/conformance.md`` between ``<!-- departures:start -->`` and ``<!-- departures:end -->`` (a
Markdown table, so people read and extend the same list the tool applies).

The summary names message types, fact names and counts only; values appear only in the report file.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine import hl7v2
from engine.errors import HL7Error, TransformError
from engine.transform.authority import Identifiers
from engine.transform.mappingset import MappingSet

#: How the corpus runs: MSH-4 as the assigning authority of identities sent without one, else CORPUS.
CHANNEL = Identifiers(facility_as_authority=True, authority="CORPUS")
EXPECTED_SUFFIX = ".expected.json"
MESSAGE_SUFFIXES = (".hl7", ".txt")

Res = dict[str, Any]


# -- normalising values ------------------------------------------------------------------------------------


def instant(v: Any) -> Any:
    """A dateTime with a time as an aware datetime (compared as an instant); dates and others unchanged."""
    if not isinstance(v, str) or len(v) <= 10 or "T" not in v:
        return v
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return v


def _code(cc: Any) -> str | None:
    """First code of a CodeableConcept (or Coding), else its text."""
    if not isinstance(cc, dict):
        return None
    codings = cc.get("coding") or ([cc] if "code" in cc else [])
    for c in codings:
        if c.get("code"):
            return str(c["code"])
    return cc.get("text")


def _codes(ccs: Any) -> list[str]:
    return sorted(c for c in (_code(x) for x in ccs or []) if c)


def _num(v: Any) -> Any:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


def _value(o: Res) -> Any:
    """An Observation's value[x], normalised to a comparable tuple."""
    if "valueQuantity" in o:
        return ("quantity", _num(o["valueQuantity"].get("value")))
    if "valueCodeableConcept" in o:
        return ("coded", _code(o["valueCodeableConcept"]))
    if "valueString" in o:
        return ("text", " ".join(str(o["valueString"]).split()))
    if "valueDateTime" in o:
        return ("dateTime", instant(o["valueDateTime"]))
    if "valueInteger" in o:
        return ("quantity", _num(o["valueInteger"]))
    if "valueBoolean" in o:
        return ("boolean", o["valueBoolean"])
    if "valueRange" in o:
        r = o["valueRange"]
        return ("range", _num((r.get("low") or {}).get("value")), _num((r.get("high") or {}).get("value")))
    if "valueRatio" in o:
        r = o["valueRatio"]
        return ("ratio", _num((r.get("numerator") or {}).get("value")), _num((r.get("denominator") or {}).get("value")))
    if "valueAttachment" in o:
        a = o["valueAttachment"]
        return ("attachment", a.get("data") or a.get("url"))
    if "valueTime" in o:
        return ("time", o["valueTime"])
    if "valuePeriod" in o:
        p = o["valuePeriod"]
        return ("period", instant(p.get("start")), instant(p.get("end")))
    return None


def _unit(o: Res) -> Any:
    q = o.get("valueQuantity")
    return (q.get("code") or q.get("unit")) if isinstance(q, dict) else None


_RANGE_TEXT = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:-|\u2013|to)\s*([+-]?\d+(?:\.\d+)?)\s*$")


def _ranges(o: Res) -> Any:
    """Reference ranges as (low, high); a range given only as text ("4.3 to 6.2") is read the same way."""
    out = []
    for r in o.get("referenceRange") or []:
        low, high = _num((r.get("low") or {}).get("value")), _num((r.get("high") or {}).get("value"))
        if low is None and high is None and (m := _RANGE_TEXT.match(str(r.get("text") or ""))):
            low, high = float(m.group(1)), float(m.group(2))
        out.append((low, high) if low is not None or high is not None else ("text", _text(r.get("text"))))
    return out or None


def _text(v: Any) -> Any:
    return " ".join(v.split()) if isinstance(v, str) else v


def _names(p: Res) -> set[tuple[Any, ...]]:
    return {(_text(n.get("family")), tuple(map(_text, n.get("given") or ()))) for n in p.get("name") or []}


def _addresses(p: Res) -> set[tuple[Any, ...]]:
    return {
        (
            tuple(map(_text, a.get("line") or ())),
            _text(a.get("city")),
            _text(a.get("state")),
            _text(a.get("postalCode")),
        )
        for a in p.get("address") or []
    }


def _telecoms(p: Res) -> set[str]:
    return {re.sub(r"[^0-9A-Za-z@.]", "", str(t.get("value"))) for t in p.get("telecom") or [] if t.get("value")}


def _ids(p: Res) -> set[str]:
    return {str(i["value"]) for i in p.get("identifier") or [] if i.get("value")}


def _content(d: Res) -> Any:
    return (
        sorted(
            str(c.get("attachment", {}).get("data") or c.get("attachment", {}).get("url"))
            for c in d.get("content") or []
        )
        or None
    )


# -- the facts ------------------------------------------------------------------------------------------------

Equal, Subset = "equal", "subset"
#: Resource type → (pairing key, [(fact, how compared, reader)]).
FACTS: dict[str, tuple[Callable[[Res], Any], list[tuple[str, str, Callable[[Res], Any]]]]] = {
    "Patient": (
        lambda r: None,
        [
            ("identifier", Subset, _ids),
            ("name", Subset, _names),
            ("birthDate", Equal, lambda r: r.get("birthDate")),
            ("gender", Equal, lambda r: r.get("gender")),
            ("address", Subset, _addresses),
            ("telecom", Subset, _telecoms),
        ],
    ),
    "Encounter": (
        lambda r: None,
        [
            ("class", Equal, lambda r: _code(r.get("class"))),
            ("status", Equal, lambda r: r.get("status")),
            ("period.start", Equal, lambda r: instant((r.get("period") or {}).get("start"))),
            ("period.end", Equal, lambda r: instant((r.get("period") or {}).get("end"))),
            ("location.count", Equal, lambda r: len(r.get("location") or []) or None),
        ],
    ),
    "Observation": (
        lambda r: _code(r.get("code")),
        [
            ("code", Equal, lambda r: _code(r.get("code"))),
            ("value", Equal, _value),
            ("unit", Equal, _unit),
            ("status", Equal, lambda r: r.get("status")),
            ("interpretation", Equal, lambda r: _codes(r.get("interpretation")) or None),
            ("referenceRange", Equal, _ranges),
        ],
    ),
    "DiagnosticReport": (
        lambda r: _code(r.get("code")),
        [
            ("status", Equal, lambda r: r.get("status")),
            ("result.count", Equal, lambda r: len(r.get("result") or [])),
        ],
    ),
    "Immunization": (
        lambda r: _code(r.get("vaccineCode")),
        [
            ("vaccineCode", Equal, lambda r: _code(r.get("vaccineCode"))),
            ("occurrence", Equal, lambda r: instant(r.get("occurrenceDateTime") or r.get("occurrenceString"))),
            ("lotNumber", Equal, lambda r: r.get("lotNumber")),
        ],
    ),
    "Appointment": (
        lambda r: None,
        [
            ("status", Equal, lambda r: r.get("status")),
            ("start", Equal, lambda r: instant(r.get("start"))),
        ],
    ),
    "DocumentReference": (lambda r: None, [("content", Equal, _content)]),
    "ServiceRequest": (
        lambda r: _code(r.get("code")),
        [
            ("code", Equal, lambda r: _code(r.get("code"))),
            ("status", Equal, lambda r: r.get("status")),
        ],
    ),
    "Condition": (lambda r: _code(r.get("code")), [("code", Equal, lambda r: _code(r.get("code")))]),
    "AllergyIntolerance": (
        lambda r: _code(r.get("code")),
        [
            ("code", Equal, lambda r: _code(r.get("code"))),
            (
                "reaction",
                Equal,
                lambda r: sorted(c for x in r.get("reaction") or [] for c in _codes(x.get("manifestation"))) or None,
            ),
        ],
    ),
}


@dataclass(frozen=True)
class Fact:
    """One compared fact of one message."""

    message: str  # the message file, relative to the corpus folder
    message_type: str  # MSH-9 code^trigger as written
    fact: str  # "Observation.value", "count.Observation"
    ours: Any
    theirs: Any
    agree: bool
    departure: str = ""  # the IG rule, when a listed peer departure explains the disagreement


@dataclass(frozen=True)
class Departure:
    """A listed departure of the peer from the IG: which messages and facts it explains, and the IG rule."""

    message: str  # glob on the message path ("*ADT-A04-01.hl7")
    fact: str  # glob on the fact ("Encounter.period.end")
    rule: str  # the IG rule the peer departs from


def _covered(mine: tuple[Any, ...], theirs: tuple[Any, ...]) -> bool:
    """A name (family, given…) or address (lines, city, state, postal code) of ours is covered by one of
    theirs when the scalar parts are equal and our parts that are lists are a subset of theirs (the peer
    also writes SAD.2/XAD.8 as lines and merges other segments' given names)."""
    for a, b in zip(mine, theirs, strict=True):
        if isinstance(a, tuple):
            if not set(a) <= set(b):
                return False
        elif a != b:
            return False
    return True


def _agree(how: str, ours: Any, theirs: Any) -> bool:
    if how == Subset:
        if not ours:
            return not theirs
        return all(x in theirs or (isinstance(x, tuple) and any(_covered(x, y) for y in theirs)) for x in ours)
    return ours == theirs


def _pair(ours: list[Res], theirs: list[Res], key: Callable[[Res], Any]) -> list[tuple[Res | None, Res | None]]:
    left = list(theirs)
    pairs: list[tuple[Res | None, Res | None]] = []
    for r in ours:
        k = key(r)
        match = next((t for t in left if key(t) == k), None)
        if match is not None:
            left.remove(match)
        pairs.append((r, match))
    pairs.extend((None, t) for t in left)
    return pairs


def _of(bundle: Res | None, rtype: str) -> list[Res]:
    if not bundle:
        return []
    return [e["resource"] for e in bundle.get("entry") or [] if (e.get("resource") or {}).get("resourceType") == rtype]


def compare(ours: Res | None, theirs: Res) -> list[tuple[str, Any, Any, bool]]:
    """The facts of two bundles: (fact, ours, theirs, agree). ``ours`` None: we refused the message."""
    return [(fact, x, y, ok) for fact, _keyed, x, y, ok in compare_keyed(ours, theirs)]


def compare_keyed(ours: Res | None, theirs: Res) -> list[tuple[str, tuple[str, ...], Any, Any, bool]]:
    """As :func:`compare`, each fact also named with the pairing key of its resource
    (``Observation(death-certificate).value``: the code of ours, else of theirs), so that a departure can
    name the resources it explains rather than every fact of a type in a message. A count is named by
    the resources one side lacks (``Observation(autopsy).count``, one name each): a departure that names
    all of them explains the count too."""
    out: list[tuple[str, tuple[str, ...], Any, Any, bool]] = []
    for rtype, (key, facts) in FACTS.items():
        mine, peer = _of(ours, rtype), _of(theirs, rtype)
        if not mine and not peer:
            continue
        pairs = _pair(mine, peer, key)
        keys = [key(a) if a is not None else key(b) if b is not None else None for a, b in pairs]
        lone = tuple(
            f"{rtype}({k or ''}).count" for (a, b), k in zip(pairs, keys, strict=True) if a is None or b is None
        )
        out.append((f"count.{rtype}", lone, len(mine), len(peer), len(mine) == len(peer)))
        for (a, b), k in zip(pairs, keys, strict=True):
            for name, how, read in facts:
                x = read(a) if a is not None else None
                y = read(b) if b is not None else None
                if x in (None, set()) and y in (None, set()):
                    continue
                fact, keyed = f"{rtype}.{name}", (f"{rtype}({k or ''}).{name}",)
                if a is None or b is None:
                    out.append((fact, keyed, x, y, False))
                else:
                    out.append((fact, keyed, x, y, _agree(how, x, y)))
    return out


# -- the corpus -------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One message: mapped, refused (with the field and code named), or unreadable."""

    message: str
    message_type: str
    status: str  # mapped | refused | unreadable | no-map
    reason: str = ""  # field and code of a refusal (no values)
    compared: bool = False


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    def by_type(self) -> dict[str, dict[str, int]]:
        rows: dict[str, Counter[str]] = defaultdict(Counter)
        for o in self.outcomes:
            rows[o.message_type]["messages"] += 1
            rows[o.message_type][o.status] += 1
            rows[o.message_type]["compared"] += o.compared
        for f in self.facts:
            row = rows[f.message_type]
            row["facts"] += 1
            row["agreed"] += f.agree
            row["departures"] += bool(f.departure)
        return {t: dict(c) for t, c in sorted(rows.items())}

    @staticmethod
    def agreement(agreed: int, facts: int, departures: int) -> float | None:
        considered = facts - departures
        return agreed / considered if considered else None

    def overall(self) -> float | None:
        agreed = sum(f.agree for f in self.facts)
        return self.agreement(agreed, len(self.facts), sum(bool(f.departure) for f in self.facts))

    def summary(self) -> str:
        """Per message type and overall: counts and percentages only (no value from any message)."""
        head = (
            f"{'type':<10} {'msgs':>5} {'mapped':>6} {'refused':>7} {'compared':>8} {'facts':>6} {'agreed':>6} "
            f"{'peer dep.':>9} {'agreement':>9}"
        )
        lines = [head]
        for t, r in self.by_type().items():
            pct = self.agreement(r.get("agreed", 0), r.get("facts", 0), r.get("departures", 0))
            lines.append(
                f"{t:<10} {r['messages']:>5} {r.get('mapped', 0):>6} {r.get('refused', 0) + r.get('no-map', 0):>7} "
                f"{r.get('compared', 0):>8} {r.get('facts', 0):>6} {r.get('agreed', 0):>6} "
                f"{r.get('departures', 0):>9} {'—' if pct is None else f'{pct:.1%}':>9}"
            )
        total = self.overall()
        mapped = sum(o.status == "mapped" for o in self.outcomes)
        lines.append(
            f"overall: {len(self.outcomes)} messages, {mapped} mapped, {sum(o.compared for o in self.outcomes)} "
            f"compared, {len(self.facts)} facts, {sum(f.agree for f in self.facts)} agreed, "
            f"{sum(bool(f.departure) for f in self.facts)} explained by listed peer departures; agreement "
            + ("—" if total is None else f"{total:.1%}")
        )
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        """Every disagreement (and every refusal), with both sides' values: a file for the developer."""
        lines = ["# Conformance report: disagreements with the peer's expected bundles", "", self.summary(), ""]
        lines += ["## Messages not mapped", ""]
        lines += [
            f"- `{o.message}` ({o.message_type}): {o.status} {o.reason}" for o in self.outcomes if o.status != "mapped"
        ]
        lines += [
            "",
            "## Disagreements",
            "",
            "| message | type | fact | ours | theirs | departure (IG rule) |",
            "|---|---|---|---|---|---|",
        ]
        for f in self.facts:
            if not f.agree:
                lines.append(
                    f"| `{f.message}` | {f.message_type} | {f.fact} | {_cell(f.ours)} | {_cell(f.theirs)} "
                    f"| {f.departure} |"
                )
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cell(v: Any) -> str:
    if isinstance(v, set):
        v = sorted(v, key=str)
    s = json.dumps(v, default=str, ensure_ascii=False)
    return s.replace("|", "\\|")[:300]


def read_departures(doc: Path) -> list[Departure]:
    """The departures table of ``docs/conformance.md`` (rows: message glob | fact glob | IG rule | …)."""
    if not doc.is_file():
        return []
    text = doc.read_text(encoding="utf-8")
    m = re.search(r"<!-- departures:start -->(.*?)<!-- departures:end -->", text, re.S)
    if not m:
        return []
    rows = [line.strip() for line in m.group(1).splitlines() if line.strip().startswith("|")]
    out = []
    for line in rows[1:]:  # the first row is the header
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if len(cells) < 3 or not cells[0] or set(cells[0]) <= set("-: "):
            continue
        out.append(Departure(cells[0], cells[1], cells[2]))
    return out


def corpus_messages(folder: Path) -> Iterable[tuple[str, Path, Path | None]]:
    """(name relative to the folder, message file, expected bundle or None), from ``manifest.csv`` if any."""
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        with manifest.open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                path = folder / row["peer"] / row["file"]
                exp = path.parent / row["expected"] if row.get("expected", "").endswith(".json") else None
                yield f"{row['peer']}/{row['file']}", path, exp
        return
    for path in sorted(p for p in folder.rglob("*") if p.suffix in MESSAGE_SUFFIXES and p.is_file()):
        exp = path.with_name(path.stem + EXPECTED_SUFFIX)
        yield str(path.relative_to(folder)), path, exp if exp.is_file() else None


def _message_type(raw: bytes) -> str:
    try:  # MSH is ASCII in every charset HL7 allows: read it even when the body does not decode
        return hl7v2.read_header(raw.removeprefix(b"\xef\xbb\xbf")[:4096].decode("latin-1")).message_type
    except HL7Error:
        return "?"


def compare_corpus(
    folder: Path,
    mappings: MappingSet,
    *,
    departures: Sequence[Departure] = (),
    identifiers: Identifiers = CHANNEL,
) -> Report:
    """Map every message of the corpus folder and compare it with the peer's expected bundle, if any."""
    report = Report()
    for name, path, expected in corpus_messages(folder):
        raw = path.read_bytes()
        mt = _message_type(raw)
        outcome = Outcome(name, mt, "mapped")
        ours: Res | None = None
        try:
            ours = mappings.transform(
                hl7v2.Message.parse(hl7v2.decode(raw)), validation="full", identifiers=identifiers
            )
        except TransformError as exc:
            outcome.status = "no-map" if exc.code == "200" else "refused"
            outcome.reason = f"{exc.field or '-'} (HL7 {exc.code})"
        except HL7Error as exc:
            outcome.status, outcome.reason = "unreadable", f"{exc.location or '-'} (HL7 {exc.code})"
        report.outcomes.append(outcome)
        if expected is None:
            continue
        outcome.compared = True
        theirs = json.loads(expected.read_text(encoding="utf-8"))
        for fact, keyed, x, y, ok in compare_keyed(ours, theirs):
            report.facts.append(Fact(name, mt, fact, x, y, ok, "" if ok else _why(departures, name, fact, keyed)))
    return report


def _why(departures: Sequence[Departure], message: str, fact: str, keyed: tuple[str, ...]) -> str:
    """The IG rule of the departure that explains a disagreement, else "". A departure's fact glob names the
    fact (``Observation.value``) or, to single out resources, the fact with their pairing key in parentheses
    (``Observation(autopsy).*``; brackets would be glob classes); a keyed fact is explained when each of its
    names is (a count: every resource one side lacks)."""
    for d in departures:
        if _matches(d, message, fact):
            return d.rule
    rules = [next((d.rule for d in departures if _matches(d, message, k)), "") for k in keyed]
    return rules[0] if rules and all(rules) else ""


def _matches(d: Departure, message: str, fact: str) -> bool:
    return fnmatch.fnmatchcase(message, d.message) and fnmatch.fnmatchcase(fact, d.fact)
