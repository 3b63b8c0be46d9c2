"""SMS part counting: GSM 03.38 and UCS-2 boundaries."""

import pytest

from relay.octopush.parts import GSM, UCS2, count_parts


@pytest.mark.parametrize(
    ("length", "parts"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4), (1224, 8), (1225, 9)],
)
def test_gsm_boundaries(length, parts):
    result = count_parts("a" * length)
    assert (result.encoding, result.units, result.parts, result.unicode_chars) == (GSM, length, parts, ())


def test_whole_basic_table_is_gsm():
    text = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ÄÖÑÜ§¿äöñüà"
    assert count_parts(text).encoding == GSM
    assert count_parts(text).units == len(text)


@pytest.mark.parametrize("char", list("^{}\\[]~|€\f"))
def test_extension_characters_count_double(char):
    assert count_parts(char).units == 2
    assert count_parts(char).encoding == GSM


def test_euro_boundaries():
    assert (count_parts("€" * 80).units, count_parts("€" * 80).parts) == (160, 1)
    assert (count_parts("€" * 81).units, count_parts("€" * 81).parts) == (162, 2)


def test_escape_sequence_is_not_split_across_parts():
    # 152 septets then "€": the pair cannot start at 153, so part 1 ends at 152.
    text = "a" * 152 + "€" + "a" * 152
    assert count_parts(text).units == 306
    assert count_parts(text).parts == 3


@pytest.mark.parametrize(
    ("length", "parts"),
    [(70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_boundaries(length, parts):
    result = count_parts("é" + "ж" * (length - 1))
    assert (result.encoding, result.units, result.parts) == (UCS2, length, parts)


def test_unicode_chars_in_order_of_first_appearance():
    result = count_parts("Привет ça va? “yes” Пр")
    assert result.encoding == UCS2
    assert result.unicode_chars == ("П", "р", "и", "в", "е", "т", "ç", "“", "”")


def test_emoji_counts_two_utf16_units():
    result = count_parts("ok 👍")
    assert (result.encoding, result.units, result.parts, result.unicode_chars) == (UCS2, 5, 1, ("👍",))


def test_ucs2_extension_chars_count_once():
    assert count_parts("ж€").units == 2


def test_empty_text_needs_no_part():
    assert count_parts("") == count_parts("").__class__(GSM, 0, 0, ())
