"""Is a unit UCUM? Units (OBX-6) become ``Quantity.system = http://unitsofmeasure.org`` and ``code`` only
when the sender names UCUM as the coding system or the code parses as UCUM syntax.

The check is a small parser of UCUM's grammar (terms joined by ``.`` and ``/``, exponents, ``10*n``,
annotations ``{...}``, parentheses) over the common atoms and the metric prefixes: ``mg/dL``, ``10*3/uL``,
``{cells}/uL``, ``mm[Hg]``, ``[IU]/L`` pass; ``tera.l-1``, ``beats/min``, ``million per microliter``
do not. It is deliberately conservative: a unit it cannot read keeps its text in ``Quantity.unit`` only.
"""

from __future__ import annotations

from functools import lru_cache

UCUM = "http://unitsofmeasure.org"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_PREFIXES = ("da", "Y", "Z", "E", "P", "T", "G", "M", "k", "h", "d", "c", "m", "u", "n", "p", "f", "a", "z", "y")
#: Atoms that take metric prefixes.
_METRIC = _words(
    """
    m s g rad K C cd mol sr Hz N Pa J W A V F Ohm S Wb Cel T H lm lx Bq Gy Sv l L ar t bar u eV pc gf Ky
    Gal dyn erg P Bi St Mx G Oe Gb sb Lmb ph Ci R RAD REM cal U eq osm kat [iU] [IU] g% m[Hg] m[H2O] B
    B[SPL] B[V] B[mV] B[uV] B[W] B[kW] Np
    """
)
#: Atoms without prefixes (time, customary, arbitrary units).
_PLAIN = _words(
    """
    min h d a wk mo % [ppm] [ppb] [pptr] [ppth] [pH] [in_i] [ft_i] [yd_i] [mi_i] [lb_av] [oz_av] [degF]
    [drp] [HPF] [LPF] [arb'U] [USP'U] [CFU] [PFU] [FFU] [BAU] [AU] [Lf] [ch] [diop] [mesh_i] [S] [sft_i]
    [sin_i] [cin_i] [gal_us] [qt_us] [pt_us] [foz_us] [tsp_us] [tbs_us] [cup_us] [degRe] [hp'_X] [hp'_C]
    [kp_X] [kp_C] [MPL'U] [GPL'U] [APL'U] [beth'U] [todd'U] [dye'U] [ka'U] [knk'U] [mclg'U] [tb'U]
    [smgy'U] [bdsk'U] [TCID_50] [CCID_50] [EID_50] [PNU] [D'ag'U] [anti'Xa'U] [Amb'a'1'U] mm[Hg] cm[H2O]
    [mm_Hg] [srd]
    """
)
_ATOMS = sorted(_METRIC | _PLAIN, key=len, reverse=True)


def is_ucum(parts: list[str]) -> bool:
    """``parts`` is a units CWE: [code, text, coding system, ...]."""
    code = parts[0] if parts else ""
    system = parts[2].upper() if len(parts) > 2 else ""
    if system == "UCUM":
        return bool(code)
    if system and system not in _UNIT_SYSTEMS:
        return False  # another vocabulary's code (SNOMED 385055001 "Tablet" parses as the number 385055001)
    return valid(code)


#: HL7 table 0396 names of unit systems whose codes may be UCUM expressions.
_UNIT_SYSTEMS = frozenset({"ISO+", "ISO", "ANS+", "ANSI"})


@lru_cache(maxsize=4096)
def valid(code: str) -> bool:
    """True when ``code`` parses as a UCUM unit expression."""
    if not code or len(code) > 64 or any(c.isspace() for c in code):
        return False
    start = 1 if code.startswith("/") else 0
    return any(end == len(code) for end in _term(code, start))


def _term(s: str, i: int) -> list[int]:
    """All positions where a term starting at ``i`` can end."""
    ends = []
    for j in _component(s, i):
        ends.append(j)
        if j < len(s) and s[j] in "./":
            ends.extend(_term(s, j + 1))
    return ends


def _component(s: str, i: int) -> list[int]:
    if i >= len(s):
        return []
    c = s[i]
    if c == "{":
        j = s.find("}", i)
        return [j + 1] if j != -1 and "{" not in s[i + 1 : j] else []
    if c == "(":
        return [j + 1 for j in _term(s, i + 1) if j < len(s) and s[j] == ")"]
    if s.startswith(("10*", "10^"), i):
        return [_annotation(s, j) for j in (_exponent(s, i + 3),) if j > i + 3]
    if c.isdigit():
        j = i
        while j < len(s) and s[j].isdigit():
            j += 1
        return [_annotation(s, j)]
    out = []
    for j in _simple(s, i):
        out.append(_annotation(s, _exponent(s, j)))
    return out


def _simple(s: str, i: int) -> list[int]:
    ends = [i + len(a) for a in _ATOMS if s.startswith(a, i)]
    for p in _PREFIXES:
        if s.startswith(p, i):
            k = i + len(p)
            ends.extend(k + len(a) for a in _METRIC if s.startswith(a, k))
    return ends


def _exponent(s: str, i: int) -> int:
    j = i + 1 if i < len(s) and s[i] in "+-" else i
    k = j
    while k < len(s) and s[k].isdigit():
        k += 1
    return k if k > j else i


def _annotation(s: str, i: int) -> int:
    if i < len(s) and s[i] == "{":
        j = s.find("}", i)
        if j != -1:
            return j + 1
    return i
