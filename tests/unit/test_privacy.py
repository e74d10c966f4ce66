"""PII scrubbing: each detector on realistic sentences, the look-alikes it must leave alone, modes."""

from __future__ import annotations

from collections import Counter

import pytest

from modelfoundry.data.privacy import PII_TYPES, Finding, find_pii, redact, scrub_texts
from modelfoundry.errors import UserError


def found(text: str) -> list[tuple[str, str]]:
    return [(f.type, f.text) for f in find_pii(text)]


# ----------------------------------------------------------------------------- true positives


@pytest.mark.parametrize(
    "text, kind, pii",
    [
        ("Please reply to jane.doe+tag@example.co.uk by Friday.", "EMAIL", "jane.doe+tag@example.co.uk"),
        ("Call me on +44 20 7946 0958 tomorrow.", "PHONE", "+44 20 7946 0958"),
        ("Office: +1 (415) 555-2671, ask for Sam.", "PHONE", "+1 (415) 555-2671"),
        ("Her cell is (415) 555-2671.", "PHONE", "(415) 555-2671"),
        ("Toll free 1-800-555-0199 any time", "PHONE", "1-800-555-0199"),
        ("Ring 415.555.2671 after six", "PHONE", "415.555.2671"),
        ("Berlin office 030 12345678, Paris 01 23 45 67 89", "PHONE", "030 12345678"),
        ("Berlin office 030 12345678, Paris 01 23 45 67 89", "PHONE", "01 23 45 67 89"),
        ("Dial 0044 20 7946 0958 from abroad", "PHONE", "0044 20 7946 0958"),
        ("SMS to +4915112345678 please", "PHONE", "+4915112345678"),
        ("I paid with 4111 1111 1111 1111 yesterday.", "CARD", "4111 1111 1111 1111"),
        ("Charge 5500-0000-0000-0004 for the order.", "CARD", "5500-0000-0000-0004"),
        ("Amex 378282246310005 expired", "CARD", "378282246310005"),
        ("Wire it to GB82 WEST 1234 5698 7654 32 today.", "IBAN", "GB82 WEST 1234 5698 7654 32"),
        ("Konto DE89370400440532013000 bei der Bank", "IBAN", "DE89370400440532013000"),
        ("The server at 192.168.1.10 went down.", "IP", "192.168.1.10"),
        ("Ping 2001:0db8:85a3:0000:0000:8a2e:0370:7334 now", "IP", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
        ("Link-local fe80::1ff:fe23:4567:890a answered.", "IP", "fe80::1ff:fe23:4567:890a"),
        ("Mapped ::ffff:192.0.2.128 is one address", "IP", "::ffff:192.0.2.128"),
        (
            "Connect with postgres://admin:s3cr3t@db.example.com:5432/prod and go.",
            "URL_CREDENTIALS",
            "postgres://admin:s3cr3t@db.example.com:5432/prod",
        ),
        ("Mirror: ftp://bob:hunter2@192.168.0.5/f.", "URL_CREDENTIALS", "ftp://bob:hunter2@192.168.0.5/f"),
        ("身份证 11010519491231002X 已核实", "NATIONAL_ID", "11010519491231002X"),
        ("ID 440304199003071248 on file", "NATIONAL_ID", "440304199003071248"),
        ("My SSN is 123-45-6789, keep it safe.", "NATIONAL_ID", "123-45-6789"),
    ],
)
def test_detects_pii_in_a_sentence(text, kind, pii):
    assert (kind, pii) in found(text)


def test_every_type_is_found_once_in_a_mixed_text():
    text = (
        "Jane (jane@example.com, +1 415 555 2671) paid 4111 1111 1111 1111 "
        "into GB82 WEST 1234 5698 7654 32 from 10.0.0.1 via https://jane:pw@example.com/pay; "
        "SSN 123-45-6789."
    )
    assert [f.type for f in find_pii(text)] == [
        "EMAIL",
        "PHONE",
        "CARD",
        "IBAN",
        "IP",
        "URL_CREDENTIALS",
        "NATIONAL_ID",
    ]
    assert set(PII_TYPES) == {f.type for f in find_pii(text)}


def test_findings_point_at_their_text_and_are_sorted():
    text = "a@b.io then 4111111111111111 then 8.8.8.8"
    findings = find_pii(text)
    assert findings == sorted(findings, key=lambda f: f.start)
    assert all(text[f.start : f.end] == f.text for f in findings)
    assert findings[0] == Finding("EMAIL", 0, 6, "a@b.io")


# ----------------------------------------------------------------------------- false positives


@pytest.mark.parametrize(
    "text",
    [
        "Order 4111111111111112 shipped",  # 16 digits, fails Luhn
        "Order 1234567890123456 shipped",
        "Ref 1234-5678-9012-3456",
        "IBAN GB83 WEST 1234 5698 7654 32 is a typo",  # wrong mod-97 check digits
        "DE88370400440532013000",
        "Hosts 999.1.1.1 and 256.1.2.3 are invalid",
        "SSN-shaped 000-12-3456 and 666-12-3456 and 900-12-3456 and 123-00-6789 and 123-45-0000",
        "Released on 2024-01-15 at 12:30:45",
        "On sale for $1,299.99 only",
        "Built in 1999, rebuilt in 2024",
        "Upgrade to v2.10.3 or 2.10.3 or build 10.0.19045.3803.1",
        "Docs at https://example.com/path?q=1 and ssh://example.com:22",
        "Call 555-1234 (too short) or order 4155552671 (no separators)",
        "Dates 15.01.2024, 01/02/2024, 2024/01/15, 07 12 2023",
        "Placeholders 123-456-7890 and 100 200 3000 are not NANP numbers",
        "uuid 123e4567-e89b-12d3-a456-426614174000, mac 00:1A:2B:3C:4D:5E",
        "C++ std::vector and Python a[1::2] and ratio 3:1:2",
        "ISBN 978-0-306-40615-7, ZIP 94105-1234, coords 40.7128, -74.0060",
        "ID 110105194912310021 has a wrong check digit",
        "ID 110105194913320027 has month 13",
        "ID 110105209912310029 is born in 2099",
        "Digits inside tokens: ABC4111111111111111, x123-45-6789y, host1.2.3.4",
    ],
)
def test_look_alikes_are_not_pii(text):
    assert find_pii(text) == []


def test_overlap_keeps_the_longer_match():
    # The credentials URL contains an e-mail-like "pw@example.com" and an IP host.
    text = "see https://jane:pw@10.1.2.3/x"
    assert found(text) == [("URL_CREDENTIALS", "https://jane:pw@10.1.2.3/x")]


def test_grouped_card_followed_by_another_number_is_still_found():
    assert found("card 4111 1111 1111 1111 2024 expiry") == [("CARD", "4111 1111 1111 1111")]


# ----------------------------------------------------------------------------- redaction


def test_redact_replaces_with_typed_placeholders_and_counts():
    text = (
        "Mail jane@example.com or bob@example.org, call +44 20 7946 0958, card 4111 1111 1111 1111, "
        "IBAN DE89370400440532013000, IP 10.0.0.1, db postgres://u:p@h.io/db, SSN 123-45-6789."
    )
    clean, counts = redact(text)
    assert clean == (
        "Mail [EMAIL] or [EMAIL], call [PHONE], card [CARD], IBAN [IBAN], IP [IP], "
        "db [URL_CREDENTIALS], SSN [NATIONAL_ID]."
    )
    assert counts == Counter(EMAIL=2, PHONE=1, CARD=1, IBAN=1, IP=1, URL_CREDENTIALS=1, NATIONAL_ID=1)


def test_redact_keeps_unicode_around_pii():
    # The fullwidth commas are part of the Chinese text under test (RUF001 would have them ASCII).
    text = "联系邮箱alice@example.com，电话+86 138 0013 8000，身份证11010519491231002X。Grüße, Zoë 🙂"  # noqa: RUF001
    clean, counts = redact(text)
    assert clean == "联系邮箱[EMAIL]，电话[PHONE]，身份证[NATIONAL_ID]。Grüße, Zoë 🙂"  # noqa: RUF001
    assert counts == Counter(EMAIL=1, PHONE=1, NATIONAL_ID=1)


@pytest.mark.parametrize(
    "text", ["", "Nothing personal: v2.10.3, $1,299.99, 2024-01-15.", "日本語のテキスト 🙂"]
)
def test_redact_without_pii_returns_text_unchanged(text):
    assert redact(text) == (text, Counter())


# ----------------------------------------------------------------------------- scrub_texts

TEXTS = ["no pii here", "write to a@b.io", "card 4111 1111 1111 1111 and 8.8.8.8"]


def test_scrub_off_does_nothing():
    assert scrub_texts(iter(TEXTS), "off") == (TEXTS, [True, True, True], Counter())


def test_scrub_report_counts_without_changing_texts():
    assert scrub_texts(TEXTS, "report") == (TEXTS, [True, True, True], Counter(EMAIL=1, CARD=1, IP=1))


def test_scrub_redact_rewrites_texts():
    texts, keep, counts = scrub_texts(TEXTS, "redact")
    assert texts == ["no pii here", "write to [EMAIL]", "card [CARD] and [IP]"]
    assert keep == [True, True, True]
    assert counts == Counter(EMAIL=1, CARD=1, IP=1)


def test_scrub_drop_masks_rows_with_pii():
    assert scrub_texts(TEXTS, "drop") == (TEXTS, [True, False, False], Counter(EMAIL=1, CARD=1, IP=1))


def test_scrub_rejects_unknown_mode_with_the_choices():
    expected = r"one of 'off', 'report', 'redact', 'drop'; got 'redcat'\. Did you mean 'redact'"
    with pytest.raises(UserError, match=expected):
        scrub_texts(TEXTS, "redcat")
