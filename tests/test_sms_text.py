from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mail2sms.errors import TooLongError
from mail2sms.models import SmsEncoding, SmsLength
from mail2sms.sms_text import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    check_length,
    measure,
)

GSM = SmsEncoding.GSM7
UCS = SmsEncoding.UCS2
EMOJI = "\N{GRINNING FACE}"  # outside the BMP: a surrogate pair in UTF-16


def test_alphabet_tables_have_the_standard_sizes() -> None:
    # 128 code points minus the escape (0x1B); ten extension characters incl. form feed.
    assert len(GSM7_BASIC) == 127
    assert set("\f^{}\\[~]|€") == GSM7_EXTENSION
    assert not GSM7_BASIC & GSM7_EXTENSION
    assert "\x1b" not in GSM7_BASIC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SmsLength(GSM, 0, 0)),
        ("a", SmsLength(GSM, 1, 1)),
        ("a" * 160, SmsLength(GSM, 160, 1)),
        ("a" * 161, SmsLength(GSM, 161, 2)),
        ("a" * 306, SmsLength(GSM, 306, 2)),
        ("a" * 307, SmsLength(GSM, 307, 3)),
        ("a" * 459, SmsLength(GSM, 459, 3)),
        ("a" * 460, SmsLength(GSM, 460, 4)),
        # Basic-table characters that look exotic still cost one septet.
        ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà", SmsLength(GSM, 44, 1)),
    ],
)
def test_gsm7_boundaries(text: str, expected: SmsLength) -> None:
    assert measure(text) == expected


@pytest.mark.parametrize("char", sorted(GSM7_EXTENSION))
def test_extension_characters_cost_two_septets(char: str) -> None:
    assert measure(char) == SmsLength(GSM, 2, 1)
    assert measure("a" * 158 + char) == SmsLength(GSM, 160, 1)
    assert measure("a" * 159 + char) == SmsLength(GSM, 161, 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("€" * 80, SmsLength(GSM, 160, 1)),
        ("€" * 81, SmsLength(GSM, 162, 2)),
        # 152 septets then an escape pair: the pair does not fit in the first part's last
        # septet, so it moves whole to part two.
        ("a" * 152 + "€" + "a" * 151, SmsLength(GSM, 305, 2)),
        ("a" * 152 + "€" + "a" * 152, SmsLength(GSM, 306, 3)),
        # 153 + 153 exactly when the pair is not at the boundary.
        ("a" * 151 + "€" + "a" * 153, SmsLength(GSM, 306, 2)),
        ("[" * 153, SmsLength(GSM, 306, 3)),
    ],
)
def test_extension_pairs_are_not_split_across_parts(text: str, expected: SmsLength) -> None:
    assert measure(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ж", SmsLength(UCS, 1, 1)),
        ("ж" * 70, SmsLength(UCS, 70, 1)),
        ("ж" * 71, SmsLength(UCS, 71, 2)),
        ("ж" * 134, SmsLength(UCS, 134, 2)),
        ("ж" * 135, SmsLength(UCS, 135, 3)),
        # One character outside GSM-7 makes the whole text UCS-2.
        ("a" * 69 + "\N{RIGHT DOUBLE QUOTATION MARK}", SmsLength(UCS, 70, 1)),
        ("a" * 70 + "\t", SmsLength(UCS, 71, 2)),
        (EMOJI, SmsLength(UCS, 2, 1)),
        (EMOJI * 35, SmsLength(UCS, 70, 1)),
        (EMOJI * 36, SmsLength(UCS, 72, 2)),
        # 66 units then a surrogate pair: it would straddle the boundary, so part two starts
        # with it and 134 units (two parts by division) need three.
        ("a" * 66 + EMOJI + "a" * 65, SmsLength(UCS, 133, 2)),
        ("a" * 66 + EMOJI + "a" * 66, SmsLength(UCS, 134, 3)),
        ("a" * 65 + EMOJI + "a" * 67, SmsLength(UCS, 134, 2)),
    ],
)
def test_ucs2_boundaries(text: str, expected: SmsLength) -> None:
    assert measure(text) == expected


@pytest.mark.parametrize(
    ("text", "max_parts"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 918, 6),
        ("ж" * 402, 6),
        ("€" * 80, 1),
    ],
)
def test_check_length_accepts_up_to_the_limit(text: str, max_parts: int) -> None:
    assert check_length(text, max_parts) == measure(text)


@pytest.mark.parametrize(
    ("text", "max_parts", "message"),
    [
        (
            "a" * 1234,
            6,
            (
                "The text is 1,234 characters, 9 SMS parts (GSM-7); the limit is 6 parts "
                "(918 characters). Shorten the message."
            ),
        ),
        (
            "a" * 161,
            1,
            (
                "The text is 161 characters, 2 SMS parts (GSM-7); the limit is 1 part "
                "(160 characters). Shorten the message."
            ),
        ),
        (
            "ж" * 403,
            6,
            (
                "The text is 403 characters, 7 SMS parts (UCS-2); the limit is 6 parts "
                "(402 characters). Shorten the message."
            ),
        ),
    ],
)
def test_check_length_refuses_with_length_and_limit(
    text: str, max_parts: int, message: str
) -> None:
    with pytest.raises(TooLongError) as caught:
        check_length(text, max_parts)
    assert caught.value.reply == f"552 5.3.4 {message}"


def test_check_length_counts_parts_not_characters() -> None:
    # 306 septets fit two parts by division, but the escape pair forces a third.
    text = "a" * 152 + "€" + "a" * 152
    with pytest.raises(TooLongError, match="3 SMS parts"):
        check_length(text, 2)


@given(st.text(min_size=1, max_size=400))
def test_non_empty_text_needs_at_least_one_part_and_no_more_than_units(text: str) -> None:
    length = measure(text)
    assert 1 <= length.parts <= length.units
    assert length.units >= len(text)


@given(st.text(max_size=300), st.text(min_size=1, max_size=50))
def test_appending_text_never_reduces_parts_within_one_alphabet(head: str, tail: str) -> None:
    before, after = measure(head), measure(head + tail)
    if before.encoding == after.encoding:
        assert after.parts >= before.parts
        assert after.units > before.units
