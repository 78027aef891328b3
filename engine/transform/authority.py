"""Default assigning authorities: the system of an identity identifier sent without one.

A FHIR search by identifier without a system matches the value under *every* system, so a conditional
update keyed on ``Patient?identifier=777`` replaces whichever Patient another facility registered under
MRN 777. The rule this module serves: **no conditional create/update is ever keyed on an identifier
without a system.**

When the identity of a resource (PID-3, PV1-19, OBR-3/OBR-2, OBX-21; see ``mappings/README.md``) arrives
without an assigning authority (CX-4, EI-2..4), the channel's :class:`Identifiers` names the authority to
assume for the sender of the message, in this order:

1. ``by_application``: the sending application (MSH-3, its namespace or universal ID) → an authority;
2. ``by_facility``: the sending facility (MSH-4, its namespace or universal ID) → an authority;
3. ``facility_as_authority``: MSH-4 itself, read as if it had been sent in CX-4 (namespace, universal
   ID, its type);
4. ``authority``: one authority for everything the channel receives.

The authority found is resolved exactly like a sent CX-4 (``functions.authority_system``: the site table
``identifier-systems``, an OID → ``urn:oid:``, a URI as it is, else ``urn:interlink:id:<namespace>``), so a
patient gets the same system whether the sender wrote the authority or the channel supplied it. When no
authority can be found, :func:`default_system` returns None and the caller refuses the message (HL7 error
101 naming the empty component, e.g. ``PID-3.4``). Reads only MSH; no value ever reaches an error.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from engine.config.model import Model
from engine.hl7v2 import Segment
from engine.transform.functions import system_for_authority
from engine.transform.tables import Table

#: The code-system map whose entries turn authorities into systems (as CX-Identifier uses it).
SYSTEMS_TABLE = "identifier-systems"

#: Which component of an identifier datatype holds its assigning authority (named in the refusal).
AUTHORITY_COMPONENT = {"CX": 4, "EI": 2, "XCN": 9}

_Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_Authority = Annotated[str, StringConstraints(pattern=r"^\S+$")]


class Identifiers(Model):
    """How an identity identifier sent without an assigning authority gets its system (see module doc).

    Without any of these, a message whose identity (PID-3, PV1-19, OBR-3/OBR-2, OBX-21) lacks its
    assigning authority is refused: a search by value alone would match other facilities' records.
    """

    by_application: dict[_Name, _Authority] = Field(
        default_factory=dict,
        description="Sending application (MSH-3 namespace or universal ID) → the assigning authority of the "
        "identifiers it sends without one: a namespace (as in CX-4.1, looked up in identifier-systems), "
        "an OID or a URI. Tried first.",
    )
    by_facility: dict[_Name, _Authority] = Field(
        default_factory=dict,
        description="Sending facility (MSH-4 namespace or universal ID) → the assigning authority of the "
        "identifiers it sends without one (namespace, OID or URI). Tried after by_application.",
    )
    facility_as_authority: bool = Field(
        False,
        description="Opt-in: use the sending facility MSH-4 itself as the assigning authority (read like a "
        "CX-4: namespace, universal ID and its type) when neither map names the sender.",
    )
    authority: _Authority | None = Field(
        None,
        description="The assigning authority (namespace, OID or URI) of everything this channel receives "
        "without one, when nothing above applies.",
    )

    @property
    def declares_default(self) -> bool:
        """Whether any default is declared at all (``interlink check`` warns when not)."""
        return bool(self.by_application or self.by_facility or self.facility_as_authority or self.authority)

    def authority_for(self, msh: Segment) -> tuple[str | None, str | None, str | None] | None:
        """The assigning authority (namespace, universal ID, universal ID type) assumed for this sender."""
        if self.by_application:
            found = _lookup(self.by_application, _hd(msh, 3))
            if found:
                return found, None, None
        facility = _hd(msh, 4)
        if self.by_facility:
            found = _lookup(self.by_facility, facility)
            if found:
                return found, None, None
        if self.facility_as_authority and (facility[0] or facility[1]):
            return facility[0] or None, facility[1] or None, facility[2] or None
        if self.authority:
            return self.authority, None, None
        return None


def _hd(msh: Segment, n: int) -> tuple[str, str, str]:
    """MSH-n (an HD) as (namespace, universal ID, type), unescaped and trimmed; HL7's ``""`` is empty."""
    value = msh.field(n)
    parts = (msh.component(value, c).strip() for c in (1, 2, 3))
    namespace, universal_id, kind = ("" if p == '""' else p for p in parts)
    return namespace, universal_id, kind


def _lookup(table: dict[str, str], hd: tuple[str, str, str]) -> str | None:
    for key in hd[:2]:
        if key and key in table:
            return table[key]
    return None


def default_system(identifiers: Identifiers | None, msh: Segment, systems: Table | None) -> str | None:
    """The system for identity identifiers this message sent without an authority, or None (refuse)."""
    if identifiers is None:
        return None
    hd = identifiers.authority_for(msh)
    if hd is None:
        return None
    return system_for_authority(*hd, systems)
