"""HL7 v2 test messages built on the fly (synthetic data, no real patients)."""

from __future__ import annotations


def oru(
    control_id: str,
    *,
    mrn: str = "MRN1001",
    filler: str | None = None,
    obx: int = 1,
    value: str = "5.5",
    birth: str = "19800101",
    pid: bool = True,
    status: str = "F",
) -> bytes:
    """An ORU^R01 with ``obx`` numeric results under one OBR (filler order number ``filler``)."""
    filler = filler or f"F{control_id}"
    segs = [
        f"MSH|^~\\&|LIS|LAB|EHR|HOSP|20240301101500+0000||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
    ]
    if pid:
        segs.append(f"PID|1||{mrn}^^^HOSP^MR||TESTER^ALEX^J||{birth}|F|||1 MAIN ST^^SPRINGFIELD^IL^62701")
    segs.append("PV1|1|O|LAB^^^HOSP||||||||||||||||V" + control_id)
    segs.append(
        f"OBR|1|P{control_id}|{filler}|24323-8^Comprehensive metabolic panel^LN|||20240301090000+0000"
        + "|" * 18
        + status
    )
    for i in range(1, obx + 1):
        segs.append(
            f"OBX|{i}|NM|{2340 + i}-8^Analyte {i}^LN||{value}|mmol/L^mmol/L^UCUM|3.5-6.5|N|||{status}"
            "|||20240301093000+0000"
        )
    return ("\r".join(segs) + "\r").encode()


def adt(
    control_id: str, trigger: str = "A01", *, mrn: str = "MRN2001", visit: str = "V2001", birth: str = "19700515"
) -> bytes:
    segs = [
        f"MSH|^~\\&|PAS|HOSP|EHR|HOSP|20240301101500+0000||ADT^{trigger}^ADT_{trigger}|{control_id}|P|2.5.1",
        f"EVN|{trigger}|20240301101500+0000",
        f"PID|1||{mrn}^^^HOSP^MR||PATIENT^PAT^Q||{birth}|M|||2 ELM ST^^SPRINGFIELD^IL^62701",
        f"PV1|1|I|WARD1^101^A^HOSP||||||||||||||||{visit}|||||||||||||||||||||||||20240301100000+0000",
    ]
    return ("\r".join(segs) + "\r").encode()
