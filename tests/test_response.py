from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from engine.errors import EncodingError, HL7Error, TransformError
from engine.hl7v2 import Message, read_header, unescape
from engine.response import byte_compatible, hl7_ack, hl7_nak_unparsed, reply_codec

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))

ADT = (
    "MSH|^~\\&|LAB^1.2.3^ISO|HOSP|EHR|CLINIC|20240101120000||ADT^A01^ADT_A01|MSG0001|P|2.3\r"
    "PID|1||123456^^^HOSP^MR||DOE^JOHN||19700101|M"
)


def segments(ack: str) -> dict[str, list[str]]:
    """Segment name -> fields, numbered so that fields[i] is SEG-i (MSH-1 is the separator)."""
    msg = Message.parse(ack)
    return {s.name: s.fields for s in msg.segments}


def test_original_mode_ack_fields() -> None:
    ack = hl7_ack(read_header(ADT), "AA", now=NOW)
    assert "\n" not in ack and not ack.endswith("\r")
    assert ack.split("\r")[0].startswith("MSH|^~\\&|")
    seg = segments(ack)
    assert list(seg) == ["MSH", "MSA"]
    msh, msa = seg["MSH"], seg["MSA"]
    assert msh[3:7] == ["EHR", "CLINIC", "LAB^1.2.3^ISO", "HOSP"]  # sender and receiver swapped, whole HD
    assert msh[7] == "20240102030405+0100"
    assert msh[9] == "ACK^A01^ACK"
    assert len(msh[10]) == 20 and msh[10] != "MSG0001"
    assert msh[11:13] == ["P", "2.3"]
    assert len(msh) == 13  # no MSH-18 when the inbound message had none
    assert msa[1:] == ["AA", "MSG0001"]


def test_control_ids_are_unique() -> None:
    header = read_header(ADT)
    ids = {read_header(hl7_ack(header, "AA")).control_id for _ in range(1000)}
    assert len(ids) == 1000


def test_default_timestamp_has_offset() -> None:
    stamp = read_header(hl7_ack(read_header(ADT), "AA")).fields[7]
    assert re.fullmatch(r"\d{14}[+-]\d{4}", stamp)
    sent = datetime.strptime(stamp, "%Y%m%d%H%M%S%z")
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 2


def test_naive_and_utc_now() -> None:
    utc = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert read_header(hl7_ack(read_header(ADT), "AA", now=utc)).fields[7] == "20240506070809+0000"
    naive = datetime(2024, 5, 6, 7, 8, 9)
    expected = naive.astimezone().strftime("%Y%m%d%H%M%S%z")
    assert read_header(hl7_ack(read_header(ADT), "AA", now=naive)).fields[7] == expected
    assert expected.startswith("20240506070809")


@pytest.mark.parametrize(("code", "enhanced"), [("AA", "CA"), ("AE", "CE"), ("AR", "CR")])
def test_enhanced_mode_uses_accept_codes(code: str, enhanced: str) -> None:
    text = ADT.replace("|P|2.3", "|P|2.5.1|||AL|NE")
    assert read_header(text).enhanced_mode
    assert segments(hl7_ack(read_header(text), code))["MSA"][1] == enhanced
    assert segments(hl7_ack(read_header(ADT), code))["MSA"][1] == code


def test_unknown_code_is_refused() -> None:
    with pytest.raises(ValueError, match="AA, AE or AR"):
        hl7_ack(read_header(ADT), "OK")


def test_version_default_processing_id_and_charset_copied() -> None:
    text = "MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X1||||||||UNICODE UTF-8~8859/1"
    msh = segments(hl7_ack(read_header(text), "AA"))["MSH"]
    assert msh[9] == "ACK^R01^ACK"
    assert msh[11] == "P" and msh[12] == "2.5.1"
    assert msh[13:18] == [""] * 5
    assert msh[18] == "UNICODE UTF-8~8859/1"


def test_message_type_without_trigger() -> None:
    text = "MSH|^~\\&|A|B|C|D|20240101||ACK|X1|P|2.5"
    assert segments(hl7_ack(read_header(text), "AA"))["MSH"][9] == "ACK^^ACK"


def test_err_segment_for_hl7_error() -> None:
    error = HL7Error("required field missing", code="101", location="PID^1^7")
    ack = hl7_ack(read_header(ADT), "AE", error=error)
    seg = segments(ack)
    assert seg["MSA"][1:] == ["AE", "MSG0001", "required field missing"]
    err = seg["ERR"]
    assert err[1] == ""
    assert err[2] == "PID^1^7"
    assert err[3] == "101^Required field missing^HL70357"
    assert err[4] == "E"
    assert err[5:8] == ["", "", ""]
    assert err[8] == "required field missing"


def test_explicit_text_is_kept_with_error() -> None:
    error = HL7Error("message exceeds 100 bytes", code="207", reject=True)
    seg = segments(hl7_ack(read_header(ADT), "AR", "rejected", error))
    assert seg["MSA"][1:] == ["AR", "MSG0001", "rejected"]
    assert seg["ERR"][2] == ""
    assert seg["ERR"][3] == "207^Application internal error^HL70357"
    assert seg["ERR"][8] == "message exceeds 100 bytes"


@pytest.mark.parametrize(
    ("field", "location"),
    [
        ("PID-7", "PID^1^7"),
        ("PID-5.1", "PID^1^5^1^1"),
        ("PID-5[2].1", "PID^1^5^2^1"),
        ("PID-5[*].1", "PID^1^5^1^1"),
        ("OBX-5.1.2", "OBX^1^5^1^1^2"),
        ("not a path", ""),
        ("", ""),
    ],
)
def test_err_location_from_transform_error(field: str, location: str) -> None:
    error = TransformError("date is not valid", field=field, rule="patient-birth-date")
    err = segments(hl7_ack(read_header(ADT), "AE", error=error))["ERR"]
    assert err[2] == location
    assert err[3] == "102^Data type error^HL70357"
    assert err[8] == "date is not valid (rule patient-birth-date)"


def test_unknown_error_code_keeps_code() -> None:
    error = HL7Error("odd", code="999")
    assert segments(hl7_ack(read_header(ADT), "AE", error=error))["ERR"][3] == "999^^HL70357"


def test_text_is_escaped() -> None:
    text = "a|b^c~d\\e&f\rg\nh"
    ack = hl7_ack(read_header(ADT), "AE", text)
    msa = ack.split("\r")[1]
    assert msa == "MSA|AE|MSG0001|a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\X0D\\g\\X0A\\h"
    assert unescape(msa.split("|")[3]) == text


def test_five_encoding_characters() -> None:
    text = "MSH|^~\\&#|A|B|C|D|20240101||ORU^R01^ORU_R01|C1|T|2.7\rPID|1"
    error = HL7Error("bad # value", code="102", location="PID^1^3")
    ack = hl7_ack(read_header(text), "AE", error=error)
    assert ack.startswith("MSH|^~\\&#|C|D|A|B|")
    header = read_header(ack)
    assert header.delimiters.truncation == "#"
    assert header.processing_id == "T" and header.version == "2.7"
    seg = segments(ack)
    assert seg["MSA"][1:] == ["AE", "C1", "bad \\P\\ value"]
    assert seg["ERR"][2] == "PID^1^3"


def test_custom_component_separator() -> None:
    text = "MSH|#~\\&|A|B#X#ISO|C|D|20240101||ADT#A08#ADT_A01|C2|P|2.5"
    error = HL7Error("bad value", code="103", location="PV1^1^2")
    ack = hl7_ack(read_header(text), "AE", "value # not in table", error)
    assert ack.startswith("MSH|#~\\&|C|D|A|B#X#ISO|")
    seg = segments(ack)
    assert seg["MSH"][9] == "ACK#A08#ACK"
    assert seg["MSA"][3] == "value \\S\\ not in table"
    assert seg["ERR"][2] == "PV1#1#2"
    assert seg["ERR"][3] == "103#Table value not found#HL70357"
    assert "^" not in ack


def test_custom_field_separator() -> None:
    text = "MSH*^~\\&*A*B*C*D*20240101**ADT^A01*C3*P*2.4"
    ack = hl7_ack(read_header(text), "AA", "ok * done")
    assert ack.startswith("MSH*^~\\&*C*D*A*B*")
    assert ack.split("\r")[1] == "MSA*AA*C3*ok \\F\\ done"


def test_ack_carries_no_message_content() -> None:
    ack = hl7_ack(read_header(ADT), "AE", error=TransformError("invalid", field="PID-5", rule="name"))
    assert "DOE" not in ack and "123456" not in ack and "19700101" not in ack


def test_nak_unparsed_salvages_control_id() -> None:
    text = "MSH|^^~\\&|A|B|C|D|20240101||ADT^A01|CTRL^7|T|2.3\rPID|1||SECRET"
    with pytest.raises(HL7Error) as info:
        read_header(text)
    nak = hl7_nak_unparsed(text, info.value, now=NOW)
    header = read_header(nak)
    assert nak.startswith("MSH|^~\\&|")
    assert header.fields[7] == "20240102030405+0100"
    assert header.fields[9] == "ACK"
    assert header.processing_id == "T" and header.version == "2.3"
    seg = segments(nak)
    assert seg["MSA"][1:] == ["AR", "CTRL", "invalid encoding characters in MSH-2"]
    assert seg["ERR"][2] == "MSH^1^2"
    assert seg["ERR"][3] == "102^Data type error^HL70357"
    assert seg["ERR"][4] == "E"
    assert "SECRET" not in nak


def test_nak_unparsed_escapes_salvaged_value() -> None:
    text = "MSH#^~\\&#A#B#C#D#20240101##ADT^A01#ID|1&2#P#2.5"  # valid MSH with '#' as field separator
    nak = hl7_nak_unparsed(text, HL7Error("broken", code="100"))
    assert segments(nak)["MSA"][2] == "ID\\F\\1\\T\\2"


def test_nak_unparsed_without_msh() -> None:
    nak = hl7_nak_unparsed("PID|1||123", HL7Error("message does not start with an MSH segment", code="100"))
    seg = segments(nak)
    assert seg["MSA"][1:] == ["AE", "", "message does not start with an MSH segment"]
    assert seg["MSH"][11:13] == ["P", "2.5.1"]
    assert seg["ERR"][3] == "100^Segment sequence error^HL70357"


def test_nak_unparsed_msh_after_leading_lines() -> None:
    text = "\ufeff\r\nMSH|^~\\&|A|B|C|D|20240101||ADT^A01|C9|P|9.9|x\r"
    assert segments(hl7_nak_unparsed(text, HL7Error("x", code="203")))["MSA"][2] == "C9"
    assert segments(hl7_nak_unparsed("PID|MSH|^~\\&|a", HL7Error("x")))["MSA"][2] == ""


def test_nak_unparsed_undecodable() -> None:
    error = EncodingError("message is not valid utf-8 at byte 12", code="102", location="")
    nak = hl7_nak_unparsed(None, error)
    seg = segments(nak)
    assert seg["MSA"][1:] == ["AE", "", "message is not valid utf-8 at byte 12"]
    assert seg["ERR"][2] == ""


# -- reply encoding: MLLP frames single bytes, so a reply is never UTF-16/32 ------------------------------


@pytest.mark.parametrize("declared", ["UNICODE UTF-16", "unicode utf-32", "UNICODE UTF-16~8859/1"])
def test_wide_msh18_is_not_copied_into_the_ack(declared: str) -> None:
    text = f"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X1|P|2.5.1||||||{declared}"
    ack = hl7_ack(read_header(text), "AR", error=HL7Error("refused", code="204", location="MSH^1^18"))
    assert len(segments(ack)["MSH"]) == 13  # no MSH-18: the ACK is ASCII
    assert ack.isascii()


@pytest.mark.parametrize(
    ("declared", "default", "codec"),
    [
        ("UNICODE UTF-16", "utf-8", "utf-8"),  # never the sender's wide charset
        ("UNICODE UTF-32", "latin-1", "latin-1"),
        ("UNICODE UTF-16", "utf-16", "ascii"),  # nor a wide channel charset
        ("", "utf-32", "ascii"),
        ("8859/1", "utf-8", "latin-1"),  # the sender's single-byte-compatible charset
        (" unicode utf-8 ", "latin-1", "utf-8"),
        ("ZZ-UNKNOWN", "cp1252", "cp1252"),
        ("", "no-such-codec", "ascii"),
    ],
)
def test_reply_codec(declared: str, default: str, codec: str) -> None:
    assert reply_codec(declared, default) == codec
    assert byte_compatible(codec)


def test_byte_compatible() -> None:
    assert all(byte_compatible(c) for c in ("ascii", "utf-8", "latin-1", "cp1252", "gb18030", "iso2022_jp"))
    assert not any(byte_compatible(c) for c in ("utf-16", "utf-16-le", "utf-32", "cp500", "no-such-codec"))
