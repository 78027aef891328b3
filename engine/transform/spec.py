"""The mapping-file language, declared once as pydantic models (docs, JSON Schema and checks derive from it).

Four kinds of file under ``mappings/hl7v2/``, by folder: ``messages/`` (:class:`MessageMap`), ``segments/``
(:class:`SegmentMap`), ``datatypes/`` (:class:`DatatypeMap`) and ``codesystems/`` (``tables.TableFile``).
A map's name is its file name without ``.yaml``; other maps refer to it by that name (``use: PID-Patient``).

A *rule* fills one FHIR element. Written as a string it is a source path (``family: XPN.1.1``); written as
a mapping it has one source — ``from`` (an HL7 path), ``value`` (a constant), ``ref`` (another resource of
the message map), ``build`` (nested rules) or a ``fn`` with ``args`` only — and at most one conversion:
``use`` (a datatype/segment map), ``fn`` (a registered function) or ``table`` (a code-system map). Several
rules for one element are a list: for a single-valued primitive the first rule that yields a value wins;
for a single object (valueQuantity) every rule adds to it, earlier rules winning per element; for a
repeating element every rule adds its values, in order.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from engine.config.model import Model
from engine.transform.authority import Identifiers

Scalar = str | int | float


class Condition(Model):
    """A declarative test on HL7 values; exactly one key."""

    present: str | None = Field(None, description="True when the path has a value.")
    absent: str | None = Field(None, description="True when the path has no value.")
    unique: str | None = Field(
        None,
        description="A field of the current segment (OBX-21): true when it has a value that no other segment of "
        "the same name in the message repeats.",
    )
    equals: dict[str, Scalar] | None = Field(None, description="Path → value; true when every path equals its value.")
    in_: dict[str, list[Scalar]] | None = Field(
        None, alias="in", description="Path → list of values; true when every path holds one of its values."
    )
    not_: Condition | None = Field(None, alias="not", description="Negation of a condition.")
    all: list[Condition] | None = Field(None, description="True when every condition holds.")
    any: list[Condition] | None = Field(None, description="True when at least one condition holds.")

    @model_validator(mode="after")
    def _one_key(self) -> Condition:
        keys = [k for k, v in self if v is not None]
        if len(keys) != 1:
            raise ValueError("a condition has exactly one of: present, absent, unique, equals, in, not, all, any")
        return self


class Rule(Model):
    """How one FHIR element is filled."""

    from_: str | None = Field(None, alias="from", description="HL7 source path (PID-5[*], XPN.1.1, NTE[*]).")
    value: Any = Field(None, description="A constant (checked against the element's type when compiled).")
    ref: str | None = Field(None, description="Reference to the resource(s) another message-map entry made.")
    build: dict[str, Any] | None = Field(None, description="Nested rules (element → rule(s)) building the element.")
    use: str | None = Field(None, description="Datatype or segment map applied to each source value.")
    fn: str | None = Field(None, description="Registered function applied to each source value.")
    args: dict[str, Scalar] = Field(default_factory=dict, description="Function arguments: paths or table names.")
    table: str | None = Field(None, description="Code-system map applied to each source code.")
    where: Condition | None = Field(None, description="Keep only source values for which this holds.")
    when: Condition | None = Field(None, description="Apply the rule only when this holds.")
    join: str | None = Field(None, description="Join all source values into one string with this separator.")
    defaults: dict[str, Any] | None = Field(None, description="Constants merged into each produced object.")
    required: bool = Field(False, description="The element must get a value, else the message is rejected.")

    @model_validator(mode="after")
    def _shape(self) -> Rule:
        sources = [k for k in ("from_", "value", "ref", "build") if getattr(self, k) is not None]
        if len(sources) > 1 or (not sources and not (self.fn and self.args)):
            raise ValueError("a rule has exactly one source: from, value, ref, build (or fn with args)")
        if sum(x is not None for x in (self.use, self.fn, self.table)) > 1:
            raise ValueError("use, fn and table are alternatives: give at most one")
        return self


#: A rule as written: a path string, a Rule mapping, or a list of those (parsed one by one when compiled).
RuleSpec = str | Rule | list[str | Rule]


class Derive(Model):
    """An identity derived from an enclosing resource's identity (e.g. an OBX without OBX-21)."""

    parent: str | None = Field(
        None, description="Enclosing message-map entry whose identity is the base (default: the direct parent)."
    )
    parts: list[str] = Field(description="HL7 paths appended to the parent's identifier value, in order.")


class IdentityRule(Model):
    """One way to find the business identifier of a resource; the first that yields a value is used."""

    from_: str | None = Field(None, alias="from", description="HL7 path of the identifier (a CX or EI).")
    use: str | None = Field(None, description="Datatype map turning the value into an Identifier.")
    where: Condition | None = Field(None, description="Keep only values for which this holds.")
    when: Condition | None = Field(None, description="Try this rule only when this holds.")
    derive: Derive | None = Field(None, description="Build the identity from the parent's identity.")

    @model_validator(mode="after")
    def _shape(self) -> IdentityRule:
        if (self.derive is None) == (self.from_ is None) or (self.from_ is not None and self.use is None):
            raise ValueError("an identity rule is either `from` + `use` (an Identifier map) or `derive`")
        return self


class Reject(Model):
    """A declarative rejection: when it holds, the message is refused with a TransformError."""

    when: Condition = Field(description="The condition that rejects the message.")
    field: str = Field(description="The HL7 field named in the error (OBX-2).")
    message: str = Field(description="What is wrong, without any value from the message.")
    code: str = Field("102", description="HL7 table 0357 error code for the NAK.")


class DatatypeMap(Model):
    """A datatype map (``datatypes/CX-Identifier.yaml``): one HL7 datatype → one FHIR datatype."""

    datatype: str = Field(description="HL7 datatype read (CX); paths start with it (CX.4.1).")
    target: str = Field(description="FHIR datatype produced (Identifier).")
    description: str = Field(description="What the map is for, and which IG map it follows.")
    requires: list[str] = Field(default_factory=list, description="Elements without which nothing is produced.")
    cache: bool = Field(
        False,
        description="Remember results per distinct input (speed). Only for vocabulary and staff — codes, "
        "units, locations, practitioners — never for patients' identifiers, names, addresses or numbers; "
        "the map may read only its own value.",
    )
    merge: bool = Field(False, description="In an overlay: replace only the listed rules of the base map.")
    rules: dict[str, Any] = Field(description="Target element (dotted path) → rule(s) (see RuleSpec).")


class SegmentMap(Model):
    """A segment map (``segments/PID-Patient.yaml``): one segment → a resource or a datatype."""

    segment: str = Field(description="HL7 segment read (PID).")
    target: str = Field(description="FHIR resource (Patient) or datatype (Annotation) produced.")
    description: str = Field(description="What the map is for, and which IG map it follows.")
    identity: list[IdentityRule] = Field(
        default_factory=list, description="Business identifier used for the conditional update (resources)."
    )
    requires: list[str] = Field(default_factory=list, description="Elements without which nothing is produced.")
    reject: list[Reject] = Field(default_factory=list, description="Conditions that reject the message.")
    merge: bool = Field(False, description="In an overlay: replace only the listed rules of the base map.")
    rules: dict[str, Any] = Field(description="Target element (dotted path) → rule(s) (see RuleSpec).")


class Entry(Model):
    """One resource (or one per segment group) a message map produces."""

    segment: str | None = Field(None, description="One resource from the only such segment in the parent group.")
    each: str | None = Field(None, description="One resource per such segment (with its group) in the parent.")
    within: str | None = Field(None, description="Parent entry whose group is searched (default: the message).")
    members: list[str] = Field(
        default_factory=list, description="Segments that follow and belong to this segment's group (NTE, PV2)."
    )
    leading: list[str] = Field(
        default_factory=list,
        description="Segments directly before this segment that belong to its group (ORU_R01: the ORC before its OBR).",
    )
    before: list[str] = Field(
        default_factory=list, description="Only segments before the first of these in the parent group."
    )
    use: str | None = Field(None, description="Segment map producing the resource.")
    include: list[str] = Field(
        default_factory=list,
        description="Segment maps of other segments of the group (RXR, PV2…) whose rules also fill this "
        "resource, after the `use` map's (IG: 'incorporate RXR content into the Immunization').",
    )
    when: Condition | None = Field(None, description="Produce the resource only when this holds.")
    required: bool | None = Field(None, description="No such segment in the parent group rejects the message.")
    identity: list[IdentityRule] | None = Field(None, description="Replaces the segment map's identity.")
    rules: dict[str, Any] = Field(
        default_factory=dict, description="Rules tried before the segment map's rules for the same element."
    )
    omit: list[str] = Field(default_factory=list, description="Segment-map elements not produced here.")
    reject: list[Reject] = Field(default_factory=list, description="Conditions that reject the message.")
    write: Literal["update", "create"] | None = Field(
        None,
        description="How the resource is written (default update): `update` is a conditional PUT on its identity "
        "(the server's copy is replaced); `create` is a POST with ifNoneExist on its identity, made only when "
        "the server holds none (a result message's ServiceRequest never overwrites the order's).",
    )

    @model_validator(mode="after")
    def _shape(self) -> Entry:
        if self.segment is not None and self.each is not None:
            raise ValueError("give `segment` (at most one) or `each` (one per segment), not both")
        return self


class MessageMap(Model):
    """A message map (``messages/ORU_R01.yaml``): which segments and groups feed which resources."""

    description: str = Field(description="What the map is for, and which IG message map it follows.")
    accepts: list[str] = Field(default_factory=list, description="Message types (MSH-9 code^trigger) mapped.")
    extends: str | None = Field(None, description="Message map whose entries this one starts from.")
    timezone: str | None = Field(None, description="Default timezone for times without offset (IANA name).")
    resources: dict[str, Entry] = Field(description="Entry name → entry, in output order.")


class Fact(Model):
    """A fact about the output: a path into the bundle and one assertion."""

    path: str = Field(description="Type[index].element.element… (Observation[0].valueQuantity.value).")
    equals: Any = Field(None, description="The value (or list of values) found at the path.")
    contains: Any = Field(None, description="One of the values found at the path.")
    exists: bool | None = Field(None, description="Whether the path has any value.")
    refers_to: str | None = Field(None, description="Every value is the fullUrl of an entry of this type.")


class ExpectedError(Model):
    """The TransformError a case expects."""

    field: str | None = Field(None, description="HL7 field named by the error (PID-7).")
    code: str | None = Field(None, description="HL7 error code (102).")
    contains: str | None = Field(None, description="Text the error message contains.")


class CaseSpec(Model):
    """One sibling test case (``<map>.tests.yaml``)."""

    name: str = Field(description="What the case shows.")
    message: str = Field(description="The HL7 message inline, or a file path relative to the test file.")
    mapping: str | None = Field(None, description="Message map to use (default: chosen from MSH-9).")
    timezone: str | None = Field(None, description="Default timezone for the run.")
    identifiers: Identifiers | None = Field(
        None,
        description="Default assigning authority for the run, as a channel's `identifiers:` ({}: none); "
        "default: the channel given to `interlink test --channel`, else none (identities without an "
        "authority are refused).",
    )
    count: dict[str, int] = Field(default_factory=dict, description="Resource type → expected number.")
    expect: list[Fact] = Field(default_factory=list, description="Facts about the output bundle.")
    error: ExpectedError | None = Field(None, description="The message must be rejected like this.")


class CasesFile(Model):
    """A sibling test file."""

    tests: list[CaseSpec] = Field(description="The cases.")


Kind = Literal["messages", "segments", "datatypes", "codesystems"]
