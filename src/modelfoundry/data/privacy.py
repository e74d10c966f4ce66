"""Find and scrub personal data (PII) in training text: pure `re` plus checksums.

Every detector is a regex for the shape followed by a validator (Luhn, mod-97, MOD 11-2, SSA rules,
`ipaddress`), so that numbers which merely look like PII — order numbers, dates, versions, prices —
stay in the text. Boundaries are ASCII (`re.ASCII`), so PII written straight against Chinese or
other non-Latin text, with no space, is still found, while digits inside longer tokens are not.

Overlaps are settled by length, then by how specific the type is: a URL with credentials beats the
e-mail-like `user:pass@host` inside it, a Chinese ID beats an 18-digit number that passes Luhn.
A URL with credentials is redacted whole, not only its `user:password` part.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from modelfoundry.errors import UserError, did_you_mean

PII_TYPES = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "URL_CREDENTIALS", "NATIONAL_ID")
# Most specific first: when two overlapping matches are equally long, the earlier type wins.
_SPECIFICITY = ("URL_CREDENTIALS", "EMAIL", "IBAN", "NATIONAL_ID", "CARD", "IP", "PHONE")
SCRUB_MODES = ("off", "report", "redact", "drop")


@dataclass(frozen=True)
class Finding:
    """One piece of PII: its type (one of PII_TYPES) and where it sits, text[start:end] == text."""

    type: str
    start: int
    end: int
    text: str


# A number must not continue a longer token on either side: no word character next to it, and
# no '.'/'-' followed by more word characters ("v2.10.3", "1.2.3.4.5", "ID-123-45-6789-7").
_NUM_START = r"(?<![\w.\-+/])"
_NUM_END = r"(?!\w)(?![.\-/]\w)"


def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.ASCII | re.VERBOSE)


# ----------------------------------------------------------------------------- e-mail and URLs

_EMAIL = _compile(r"""
    (?<![\w.%+\-])
    [A-Za-z0-9_%+\-]+ (?:\.[A-Za-z0-9_%+\-]+)*                 # local part, no empty dot-atoms
    @ (?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+ [A-Za-z]{2,63}
    (?![\w\-])
""")

# scheme://user:password@host[:port][/path]; a raw '@' inside the password is tolerated.
_URL_CREDENTIALS = _compile(r"""
    (?<![\w+.\-]) [A-Za-z][A-Za-z0-9+.\-]* ://
    [A-Za-z0-9\-._~%!$&'()*+,;=]+ : [A-Za-z0-9\-._~%!$&'()*+,;=:@]+ @
    (?:\[[0-9A-Fa-f:.]+\] | [A-Za-z0-9\-._~%]+) (?::\d+)?
    (?:[/?\#][A-Za-z0-9\-._~%!$&'()*+,;=:@/?\#\[\]]*)?
""")
_TRAILING_PUNCTUATION = ".,;:!?)]}'\""


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _url_credentials(text: str) -> Iterator[tuple[int, int]]:
    for m in _URL_CREDENTIALS.finditer(text):
        # "see https://u:p@host/x." — the sentence's full stop is not part of the URL.
        end = m.start() + len(m.group().rstrip(_TRAILING_PUNCTUATION))
        if "@" in text[m.start() : end]:
            yield m.start(), end


# ----------------------------------------------------------------------------- phone numbers

_PHONE = _compile(rf"""
    {_NUM_START}
    (?:
        # +44 20 7946 0958, +1 (415) 555-2671, +49 (0)30 1234567, +4915112345678
        \+[1-9]\d{{0,2}} (?:[ .\-]?\(\d{{1,4}}\))? [ .\-]?\d{{1,12}} (?:[ .\-]\d{{1,12}}){{0,5}}
        # (415) 555-2671, 1 (800) 555-0199
      | (?:1[ .\-]?)? \([2-9]\d\d\)[ .\-]?[2-9]\d\d[ .\-]\d{{4}}
        # 415-555-2671, 1-800-555-0199, 415.555.2671
      | (?:1[ .\-])? [2-9]\d\d(?P<us>[ .\-])[2-9]\d\d(?P=us)\d{{4}}
        # 020 7946 0958, (030) 1234567, 030/12345678, 01 23 45 67 89, 0044 20 7946 0958
      | (?:0\d{{1,4}}|\(0\d{{1,4}}\)) (?P<eu>[ .\-/])\d{{2,8}} (?:(?P=eu)\d{{2,8}}){{0,3}}
    )
    {_NUM_END}
""")
# Dates (15.01.2024, 2024/01/15, 07 12 2023) and SSN shapes (000-12-3456) the 0-prefix form would take.
_NOT_A_PHONE = _compile(r"""
    \d{1,2}([./\- ])\d{1,2}\1\d{2,4} | \d{4}([./\- ])\d{1,2}\2\d{1,2} | \d{3}-\d{2}-\d{4}
""")


def _phones(text: str) -> Iterator[tuple[int, int]]:
    """International +CC numbers (8-15 digits), US numbers (NXX-NXX-XXXX, N = 2-9) and European
    numbers with a 0 or 00 prefix (one kind of separator, not a date).

    Bare digit runs are never phones: without a '+' or separators, a 10-digit number is as likely
    an order number.
    """
    for m in _PHONE.finditer(text):
        number = m.group()
        digits = sum(c.isdigit() for c in number) - number.count("(0)")
        if number.startswith("+"):
            ok = 8 <= digits <= 15
        elif number.lstrip("(").startswith("0"):
            # "00" is Europe's international prefix (0044 20 7946 0958), a single 0 the trunk prefix.
            low, high = (10, 17) if number.startswith("00") else (8, 12)
            ok = low <= digits <= high and not _NOT_A_PHONE.fullmatch(number)
        else:
            ok = digits in (10, 11)
        if ok:
            yield m.span()


# ----------------------------------------------------------------------------- cards and IBANs

_CARD = _compile(rf"""
    {_NUM_START}
    (?: \d{{13,19}} | \d{{4}} (?P<sep>[ \-])\d{{3,6}} (?:(?P=sep)\d{{3,6}}){{1,4}} )   # 4111 1111 1111 1111
    {_NUM_END}
""")

_IBAN = _compile(r"""
    (?<![\w\-]) [A-Z]{2}\d{2} (?:[ ]?[A-Z0-9]{4}){2,7} (?:[ ]?[A-Z0-9]{1,3})? (?![\w\-])
""")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _iban_ok(iban: str) -> bool:
    """ISO 13616: move the country code and check digits to the end, letters to 10..35, mod 97 == 1."""
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _longest_valid_prefix(
    text: str, start: int, end: int, is_valid: Callable[[str], bool]
) -> tuple[int, int] | None:
    """The longest run of whole groups, from the match's start, whose separator-free form is valid.

    A grouped number can run into the next number in the sentence ("4111 1111 1111 1111 2024");
    dropping whole trailing groups recovers it.
    """
    groups = list(re.finditer(r"[A-Za-z0-9]+", text[start:end]))
    for last in range(len(groups) - 1, -1, -1):
        if is_valid("".join(g.group() for g in groups[: last + 1])):
            return start, start + groups[last].end()
    return None


def _cards(text: str) -> Iterator[tuple[int, int]]:
    """13-19 digits, bare or in groups (first of 4) split by one kind of separator, passing Luhn."""

    def valid(digits: str) -> bool:
        return 13 <= len(digits) <= 19 and _luhn_ok(digits)

    for m in _CARD.finditer(text):
        span = _longest_valid_prefix(text, *m.span(), valid)
        if span:
            yield span


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        span = _longest_valid_prefix(text, *m.span(), _iban_ok)
        if span:
            yield span


# ----------------------------------------------------------------------------- IP addresses

_IPV4 = _compile(r"(?<![\w.]) (?:\d{1,3}\.){3}\d{1,3} (?!\w)(?!\.\d)")
_IPV6 = _compile(r"""
    (?<![\w:.]) [0-9A-Fa-f:]{2,39} (?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})? (?![\w:])(?!\.\w)
""")


def _ips(text: str) -> Iterator[tuple[int, int]]:
    """IPv4 with every octet 0-255; IPv6 full or '::'-compressed, as `ipaddress` accepts it.

    IPv6 needs four hex digits or more, so '::', Python slices like 'a[1::2]' and times like
    '12:30:45' (rejected by `ipaddress` anyway) are not addresses.
    """
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield m.span()
    if "::" not in text and text.count(":") < 7:
        return
    for m in _IPV6.finditer(text):
        candidate = m.group()
        if sum(c in "0123456789abcdefABCDEF" for c in candidate) < 4:
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield m.span()


# ----------------------------------------------------------------------------- national IDs

_CN_ID = _compile(r"(?<![\w\-]) \d{17}[\dXx] (?![\w\-])")
_CN_PROVINCES = {
    11,
    12,
    13,
    14,
    15,
    21,
    22,
    23,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    41,
    42,
    43,
    44,
    45,
    46,
    50,
    51,
    52,
    53,
    54,
    61,
    62,
    63,
    64,
    65,
    71,
    81,
    82,
    83,
}
_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_US_SSN = _compile(r"(?<![\w\-]) (\d{3})-(\d{2})-(\d{4}) (?![\w\-])")


def _cn_id_ok(number: str) -> bool:
    """Chinese resident ID: province code, birth date YYYYMMDD (1900 to today), ISO 7064 MOD 11-2."""
    if int(number[:2]) not in _CN_PROVINCES:
        return False
    try:
        born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= datetime.date.today():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _CN_WEIGHTS))
    return "10X98765432"[total % 11] == number[17].upper()


def _ssn_ok(area: str, group: str, serial: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    return area not in {"000", "666"} and area[0] != "9" and group != "00" and serial != "0000"


def _national_ids(text: str) -> Iterator[tuple[int, int]]:
    for m in _CN_ID.finditer(text):
        if _cn_id_ok(m.group()):
            yield m.span()
    for m in _US_SSN.finditer(text):
        if _ssn_ok(*m.groups()):
            yield m.span()


# ----------------------------------------------------------------------------- public API

_HAS_DIGIT = re.compile(r"\d", re.ASCII).search
# (type, detector, cheap gate: the detector cannot match unless this holds)
_DETECTORS = (
    ("URL_CREDENTIALS", _url_credentials, lambda t: "@" in t),
    ("EMAIL", _emails, lambda t: "@" in t),
    ("IBAN", _ibans, _HAS_DIGIT),
    ("NATIONAL_ID", _national_ids, _HAS_DIGIT),
    ("CARD", _cards, _HAS_DIGIT),
    ("IP", _ips, lambda t: ":" in t or _HAS_DIGIT(t)),
    ("PHONE", _phones, _HAS_DIGIT),
)


def find_pii(text: str) -> list[Finding]:
    """All PII in `text`, non-overlapping and sorted by start.

    Where candidates overlap, the longer one wins; on equal length, the more specific type
    (URL_CREDENTIALS, EMAIL, IBAN, NATIONAL_ID, CARD, IP, PHONE, in that order).
    """
    candidates = [
        (start, end, kind) for kind, detect, gate in _DETECTORS if gate(text) for start, end in detect(text)
    ]
    candidates.sort(key=lambda c: (c[0] - c[1], _SPECIFICITY.index(c[2]), c[0]))
    taken = bytearray(len(text))
    findings = []
    for start, end, kind in candidates:
        if not any(taken[start:end]):
            taken[start:end] = b"\x01" * (end - start)
            findings.append(Finding(kind, start, end, text[start:end]))
    return sorted(findings, key=lambda f: f.start)


def redact(text: str) -> tuple[str, Counter]:
    """Replace each finding with its typed placeholder ("[EMAIL]", "[CARD]", ...); count per type."""
    findings = find_pii(text)
    parts, last = [], 0
    for f in findings:
        parts += [text[last : f.start], f"[{f.type}]"]
        last = f.end
    parts.append(text[last:])
    return "".join(parts), Counter(f.type for f in findings)


def scrub_texts(texts: Iterable[str], mode: str) -> tuple[list[str], list[bool], Counter]:
    """Scan a column of texts for PII and act on it according to `mode`.

    Args:
        texts: the texts, one per row.
        mode: "off" — no scanning; "report" — count only; "redact" — replace PII with placeholders;
            "drop" — count, and mark rows holding any PII False in the keep-mask.

    Returns:
        (texts, keep_mask, counts): the texts as a list (rewritten only in "redact" mode), one
        bool per row (False only for rows to drop in "drop" mode), and findings per PII type.
    """
    if mode not in SCRUB_MODES:
        raise UserError(
            f"PII scrub mode must be one of {', '.join(map(repr, SCRUB_MODES))}; got {mode!r}."
            + did_you_mean(mode, SCRUB_MODES)
        )
    texts = list(texts)
    counts: Counter = Counter()
    keep = [True] * len(texts)
    if mode == "off":
        return texts, keep, counts
    if mode == "redact":
        out = []
        for text in texts:
            clean, found = redact(text)
            out.append(clean)
            counts.update(found)
        return out, keep, counts
    for i, text in enumerate(texts):
        found = Counter(f.type for f in find_pii(text))
        counts.update(found)
        if mode == "drop" and found:
            keep[i] = False
    return texts, keep, counts
