"""Go regexp syntax (RE2) as the API server's CRD validation evaluates a schema ``pattern``."""

from __future__ import annotations

import pytest

from testbed.apiserver import crd, goregexp

pytestmark = pytest.mark.unit

#: the shape of Calico v3.28.1's FelixConfiguration enum patterns (its CRDs in calico.yaml)
SEVERITY = "^(?i)(Debug|Info|Warning|Error|Fatal)?$"


def test_an_inline_flag_after_the_start_applies_to_the_rest_of_its_group():
    assert goregexp.search(SEVERITY, "Info") and goregexp.search(SEVERITY, "info")
    assert goregexp.search(SEVERITY, "")  # the whole group is optional
    assert not goregexp.search(SEVERITY, "Verbose")
    assert goregexp.translate(SEVERITY) == r"^(?i:(Debug|Info|Warning|Error|Fatal)?\Z)"
    assert goregexp.search("^a(?i)b$", "aB") and not goregexp.search("^a(?i)b$", "AB")
    # the flag holds across | in its group, and ends with the group
    assert goregexp.search("^(x(?i)y|z)q$", "Zq") and not goregexp.search("^(x(?i)y|z)q$", "zQ")
    assert not goregexp.search("^(x(?i)y|z)q$", "Xyq")
    assert goregexp.search("(?i:a)b", "Ab") and not goregexp.search("(?i:a)b", "AB")


def test_end_of_text_is_the_end_and_ascii_classes():
    assert not goregexp.search("^a$", "a\n")  # Go's $ is \z without the m flag (Python's allows a final \n)
    assert goregexp.search("^a$", "a") and goregexp.search("(?m)^a$", "a\nb")
    assert goregexp.search(r"^a\z", "a") and not goregexp.search(r"^\d+$", "١٢")  # Arabic digits: not Go's \d
    assert goregexp.search(r"^[[:alpha:]_][[:word:]]*$", "ab_1") and not goregexp.search("^[[:digit:]]$", "a")
    assert goregexp.search(r"^\Q1+1\E$", "1+1") and not goregexp.search(r"^\Q1+1\E$", "11")
    assert goregexp.search("^(?P<a>x)(?<b>y)$", "xy")


@pytest.mark.parametrize("pattern", ["(?=a)", "(?!a)", "(?<=a)b", r"(a)\1", r"a\Z", "(?U)a*", r"\pL", "(a", "a)",
                                     "[[:nope:]]", "(?i-)a"])
def test_what_go_rejects_or_calicolab_does_not_translate_is_an_error(pattern):
    with pytest.raises(goregexp.GoRegexpError):
        goregexp.compile(pattern)


def test_crd_validation_evaluates_patterns_as_go_does():
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "logSeverityScreen": {"type": "string", "pattern": SEVERITY},
        "odd": {"type": "string", "pattern": "(?=x)"}}}}}
    errs: list = []
    crd._validate({"spec": {"logSeverityScreen": "Info"}}, schema, "", errs, top=True)
    assert errs == []
    crd._validate({"spec": {"logSeverityScreen": "Loud"}}, schema, "", errs, top=True)
    assert [(e.field, e.detail) for e in errs] == [("spec.logSeverityScreen", f"should match '{SEVERITY}'")]
    errs.clear()
    crd._validate({"spec": {"odd": "x"}}, schema, "", errs, top=True)
    assert len(errs) == 1 and "cannot be evaluated" in errs[0].detail and "(?=" in errs[0].detail
