import pytest

from ablate.spec.units import format_tokens, parse_tokens


@pytest.mark.parametrize(
    "text,value",
    [
        ("20k", 20_000),
        ("1.8B", 1_800_000_000),
        ("380B", 380_000_000_000),
        (20000, 20000),
        ("20000", 20000),
        ("4K", 4000),
        ("1.5M", 1_500_000),
        ("1e3", 1000),
        ("2T", 2 * 10**12),
        (8.0, 8),
    ],
)
def test_parses_suffixes_exactly(text, value):
    assert parse_tokens(text) == value


@pytest.mark.parametrize(
    "bad,fragment",
    [
        ("20q", "unknown unit 'q'"),
        ("-5", "positive"),
        (0, "positive"),
        ("1.2345k", "whole number"),
        ("lots", "not a token count"),
        (True, "not a token count"),
        (2.5, "whole number"),
    ],
)
def test_refuses_bad_counts_with_the_fix(bad, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        parse_tokens(bad)
    assert "e.g. 20k" in str(info.value)


def test_formats_short():
    assert [format_tokens(n) for n in (380 * 10**9, 1_800_000_000, 20_000, 512)] == [
        "380B",
        "1.8B",
        "20k",
        "512",
    ]
