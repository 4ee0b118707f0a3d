from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mail2sms.errors import TooLongError
from mail2sms.models import SmsEncoding, SmsLength
from mail2sms.sms_text import (
    _IF_GSM7,
    _SAFE,
    GSM7_BASIC,
    GSM7_EXTENSION,
    check_length,
    measure,
    normalize,
    truncate,
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


# --- measure: more boundaries ------------------------------------------------------------


@pytest.mark.parametrize("parts", [2, 3, 4, 5, 6, 10])
def test_gsm7_multipart_boundaries_are_153_each(parts: int) -> None:
    assert measure("a" * 153 * parts) == SmsLength(GSM, 153 * parts, parts)
    assert measure("a" * (153 * parts + 1)) == SmsLength(GSM, 153 * parts + 1, parts + 1)


@pytest.mark.parametrize("parts", [2, 3, 4, 5, 6, 10])
def test_ucs2_multipart_boundaries_are_67_each(parts: int) -> None:
    assert measure("ж" * 67 * parts) == SmsLength(UCS, 67 * parts, parts)
    assert measure("ж" * (67 * parts + 1)) == SmsLength(UCS, 67 * parts + 1, parts + 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The pair straddles the end of part two (septets 306 and 307): part three.
        ("a" * 305 + "^" + "a", SmsLength(GSM, 308, 3)),
        ("a" * 304 + "^", SmsLength(GSM, 306, 2)),
        # Each part holds 76 pairs (152 septets), never 76.5.
        ("{" * 152, SmsLength(GSM, 304, 2)),
        ("{" * 153, SmsLength(GSM, 306, 3)),
        ("|" * 80 + "a", SmsLength(GSM, 161, 2)),
        ("\f" * 80, SmsLength(GSM, 160, 1)),
        # A pair inside the single-part room is fine even at its very end.
        ("a" * 158 + "~", SmsLength(GSM, 160, 1)),
    ],
)
def test_extension_pairs_at_later_part_boundaries(text: str, expected: SmsLength) -> None:
    assert measure(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a" * 68 + EMOJI, SmsLength(UCS, 70, 1)),
        ("a" * 69 + EMOJI, SmsLength(UCS, 71, 2)),
        # Part two ends at unit 134: an emoji at units 134-135 moves to part three.
        ("ж" * 133 + EMOJI, SmsLength(UCS, 135, 3)),
        ("ж" * 132 + EMOJI, SmsLength(UCS, 134, 2)),
        # 33 emoji per part (66 units), not 33.5.
        (EMOJI * 66, SmsLength(UCS, 132, 2)),
        (EMOJI * 67, SmsLength(UCS, 134, 3)),
        # A GSM-7 text with one emoji is UCS-2 throughout.
        ("a" * 67 + EMOJI, SmsLength(UCS, 69, 1)),
    ],
)
def test_surrogate_pairs_at_part_boundaries(text: str, expected: SmsLength) -> None:
    assert measure(text) == expected


# --- normalize ---------------------------------------------------------------------------

OUTLOOK = (
    "Hi Sam \N{EN DASH} the server\N{RIGHT SINGLE QUOTATION MARK}s \N{LEFT DOUBLE QUOTATION MARK}"
    "backup\N{RIGHT DOUBLE QUOTATION MARK} job failed at 02:00\N{HORIZONTAL ELLIPSIS} "
    "I\N{RIGHT SINGLE QUOTATION MARK}ll look at it first thing tomorrow morning and let you "
    "know.\N{NO-BREAK SPACE}Thanks,\r\nAlex"
)


def test_typical_outlook_sentence_becomes_gsm7_and_needs_fewer_parts() -> None:
    before = measure(OUTLOOK)
    after_text = normalize(OUTLOOK)
    after = measure(after_text)
    assert after_text == (
        "Hi Sam - the server's \"backup\" job failed at 02:00... I'll look at it first thing "
        "tomorrow morning and let you know. Thanks,\nAlex"
    )
    assert before == SmsLength(UCS, 128, 2)
    assert after == SmsLength(GSM, 129, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\u2018single\u2019 \u201alow\u201b", "'single' 'low'"),
        ("\u201cdouble\u201d \u201elow\u201f", '"double" "low"'),
        ("5\u2032 11\u2033", "5' 11\""),
        ("\u00abGuillemets\u00bb \u2039single\u203a", "\"Guillemets\" 'single'"),
        ("don`t don\u00b4t", "don't don't"),
        ("a\u2010b\u2011c\u2012d\u2013e\u2014f\u2015g\u2212h", "a-b-c-d-e-f-g-h"),
        (
            "\u2022 one\n\u2023 two\n\u25e6 three\n\u2043 four\n\u2219 five",
            "- one\n- two\n- three\n- four\n- five",
        ),
        ("wait\u2026", "wait..."),
        ("1\u00a0000\u202f000\u2009m\u3000ok\u2003!", "1 000 000 m ok !"),
        (
            "soft\u00adhyphen zero\u200bwidth word\u2060joiner \ufeffbom",
            "softhyphen zerowidth wordjoiner bom",
        ),
        ("1\u20442 and 3\u22154", "1/2 and 3/4"),
        ("\uff28\uff45\uff4c\uff4c\uff4f\uff01\uff1f \uff08\uff11\uff09", "Hello!? (1)"),
        ("a\r\nb\rc\nd", "a\nb\nc\nd"),
        ("col1\tcol2", "col1 col2"),
        ("line\u2028next\u2029para", "line\nnext\npara"),
        ("10 \u2126 and 1 \u212b", "10 \u03a9 and 1 \u00c5"),
        ("\ufffe\u00a3\uffe1\uffe5", "\ufffe\u00a3\u00a3\u00a5"),
    ],
)
def test_normalize_maps_to_gsm7_equivalents(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # Every character of both GSM-7 tables, accented letters and Greek capitals included.
        "".join(sorted(GSM7_BASIC - {"\r"})) + "".join(sorted(GSM7_EXTENSION)),
        "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439\u0442\u0435",  # Cyrillic
        "\u4f60\u597d\uff0c\u4e16\u754c",  # CJK; the full-width comma is ASCII, mapped below
        "f\u00eate na\u00efve \u00e7a \u00c0 \u00c8 \u00d9 \u0153",  # accents GSM-7 lacks
        EMOJI + " \N{THUMBS UP SIGN}\N{EMOJI MODIFIER FITZPATRICK TYPE-4}",
    ],
)
def test_normalize_keeps_gsm7_and_real_non_gsm_text(text: str) -> None:
    expected = text.replace("\uff0c", ",")
    assert normalize(text) == expected


def test_joiners_and_ellipsis_stay_when_the_text_stays_ucs2() -> None:
    family = "\N{MAN}\u200d\N{WOMAN}\u200d\N{GIRL}"
    assert normalize(f"{family} home\u2026") == f"{family} home\u2026"
    assert normalize("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645") == (
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    )
    # In a text that becomes GSM-7 the invisible joiner is stray and goes.
    assert normalize("stray\u200djoiner\u200e\u2026") == "strayjoiner..."


def test_ellipsis_is_not_expanded_when_that_costs_a_part() -> None:
    text = "\u2026" * 70  # one UCS-2 part; as "..." it would be 210 septets, two parts
    assert normalize(text) == text
    assert normalize("\u2026" * 53) == "..." * 53  # 159 septets: one part either way


def test_every_unicode_space_separator_becomes_a_space() -> None:
    spaces = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Zs"]
    assert spaces
    assert normalize("".join(spaces)) == " " * len(spaces)


def test_translation_targets_are_not_translated_again() -> None:
    # What makes normalize idempotent: no target is itself a key of either table.
    targets = "".join(v for v in (*_SAFE.values(), *_IF_GSM7.values()) if v)
    assert not {ord(char) for char in targets} & (_SAFE.keys() | _IF_GSM7.keys())
    assert all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in targets)


# --- truncate ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "max_parts"),
    [("", 1), ("a" * 160, 1), ("a" * 918, 6), ("ж" * 70, 1), (EMOJI * 35, 1), ("€" * 80, 1)],
)
def test_truncate_returns_text_that_fits_unchanged(text: str, max_parts: int) -> None:
    assert truncate(text, max_parts) is text


def test_truncate_cuts_gsm7_at_a_word_boundary_with_three_dots() -> None:
    text = "word " * 40  # 200 septets
    result = truncate(text, 1)
    assert result == "word " * 30 + "word..."
    assert measure(result) == SmsLength(GSM, 157, 1)


def test_truncate_cuts_ucs2_with_one_character_ellipsis() -> None:
    text = "слово " * 20  # 120 units
    result = truncate(text, 1)
    assert result.endswith("слово\u2026")
    assert measure(result).encoding is UCS
    assert measure(result).parts == 1
    assert text.startswith(result[:-1])


def test_truncate_cuts_hard_inside_a_long_token() -> None:
    result = truncate("see https://example.com/" + "x" * 300, 1)
    assert result == ("see https://example.com/" + "x" * 300)[:157] + "..."
    assert measure(result) == SmsLength(GSM, 160, 1)


def test_truncate_never_splits_a_surrogate_pair_or_an_emoji_sequence() -> None:
    result = truncate(EMOJI * 50, 1)
    assert result == EMOJI * 34 + "\u2026"
    assert measure(result) == SmsLength(UCS, 69, 1)
    thumbs = "\N{THUMBS UP SIGN}\N{EMOJI MODIFIER FITZPATRICK TYPE-4}"  # four units
    result = truncate(thumbs * 30, 1)
    assert result == thumbs * 17 + "\u2026"


def test_truncate_keeps_extension_pairs_whole() -> None:
    result = truncate("€" * 100, 1)
    assert result == "€" * 78 + "..."
    assert measure(result) == SmsLength(GSM, 159, 1)


def test_truncate_drops_a_trailing_non_gsm_tail_and_uses_gsm7_ellipsis() -> None:
    # The text is UCS-2 only because of what is cut off, so the kept part is GSM-7.
    text = "a" * 300 + " ж"
    result = truncate(text, 1)
    assert result == "a" * 157 + "..."
    assert measure(result).encoding is GSM


@pytest.mark.parametrize("max_parts", [0, -1])
def test_truncate_refuses_a_limit_below_one(max_parts: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        truncate("text", max_parts)


# --- properties --------------------------------------------------------------------------

# Text rich in the characters normalize and truncate care about, mixed with anything else.
INTERESTING = st.text(
    alphabet=st.one_of(
        st.sampled_from(
            sorted(GSM7_BASIC | GSM7_EXTENSION)
            + [chr(key) for key in (*_SAFE.keys(), *_IF_GSM7.keys())]
            + ["ж", "ç", "ê", "\u4f60", EMOJI, "\u0301", "\u200d", " "]
        ),
        st.characters(),
    ),
    max_size=500,
)
PROPERTY = settings(max_examples=200, deadline=None)


@PROPERTY
@given(st.one_of(INTERESTING, st.text(max_size=400)))
def test_normalize_never_costs_parts_and_is_idempotent(text: str) -> None:
    once = normalize(text)
    assert measure(once).parts <= measure(text).parts
    assert normalize(once) == once


@PROPERTY
@given(INTERESTING, st.integers(min_value=1, max_value=4))
def test_truncate_fits_and_is_a_prefix_plus_ellipsis(text: str, max_parts: int) -> None:
    result = truncate(text, max_parts)
    assert measure(result).parts <= max_parts
    if measure(text).parts <= max_parts:
        assert result == text
    else:
        ellipsis = "..." if result.endswith("...") and measure(result).encoding is GSM else "\u2026"
        assert result.endswith(ellipsis)
        assert text.startswith(result[: -len(ellipsis)])


def _measure_char_by_char(text: str) -> tuple[str, int, int]:
    """The definition ``measure`` implements, one character at a time (its old code)."""
    from mail2sms.sms_text import GSM7_BASIC, GSM7_EXTENSION  # noqa: PLC0415

    if not text:
        return "gsm7", 0, 0
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        costs = [2 if c in GSM7_EXTENSION else 1 for c in text]
        single, multi, name = 160, 153, "gsm7"
    else:
        costs = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, multi, name = 70, 67, "ucs2"
    units = sum(costs)
    if units <= single:
        return name, units, 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            parts, used = parts + 1, 0
        used += cost
    return name, units, parts


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09 @€[]^{}|~\\\n\r£éΔ😀中ç"), max_size=700))
def test_measure_counts_as_the_definition_does(text: str) -> None:
    length = measure(text)
    assert (length.encoding.value.lower().replace("-", ""), length.units, length.parts) == (
        _measure_char_by_char(text)
    )
