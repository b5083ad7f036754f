"""datastore.duration: Go's time.ParseDuration, the one duration parser of the project."""

import pytest

from datastore.duration import parse_duration

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text,seconds", [
    ("90s", 90), ("1m30s", 90), ("500ms", 0.5), ("2h45m", 9900), ("1.5h", 5400),
    ("0", 0), ("-1.5h", -5400), ("+5s", 5), (".5s", 0.5), ("1.s", 1), ("300us", 0.0003),
    ("300\u00b5s", 0.0003), ("10ns", 1e-8), ("2m0s", 120), ("1h0m0s", 3600),
])
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text,message", [
    ("", 'time: invalid duration ""'),
    ("ninety", 'time: invalid duration "ninety"'),
    ("90", 'time: missing unit in duration "90"'),
    ("1d", 'time: unknown unit "d" in duration "1d"'),
    ("15 min", 'time: unknown unit " min" in duration "15 min"'),
    (".", 'time: invalid duration "."'),
    ("-", 'time: invalid duration "-"'),
    ("1m30", 'time: missing unit in duration "1m30"'),
])
def test_bad_durations_are_worded_as_go_words_them(text, message):
    with pytest.raises(ValueError) as err:
        parse_duration(text)
    assert str(err.value) == message


def test_bare_seconds_for_env_and_flags():
    assert parse_duration("90", bare_seconds=True) == 90
    assert parse_duration("2.5", bare_seconds=True) == 2.5
    assert parse_duration("1m", bare_seconds=True) == 60
    with pytest.raises(ValueError):
        parse_duration("x", bare_seconds=True)
