"""Calico's selector language: parsing, evaluation, canonical form and IDs (libcalico-go v3.28.1)."""

import pytest

from datastore.selector import SelectorError, make_unique_id, normalise, parse_selector

pytestmark = pytest.mark.unit

LABELS = {"app": "web", "tier": "front", "env": "prod-eu-1", "projectcalico.org/namespace": "default"}


def test_unique_id_golden_vector_from_calico_md():
    """calico.md section 5: projectcalico.org/namespace == "default" -> cali40s:4g010_DunYvItGg3dv2Mxna."""
    sel = parse_selector("projectcalico.org/namespace == 'default'")
    assert sel.canonical() == 'projectcalico.org/namespace == "default"'
    assert sel.unique_id().startswith("s:4g010_DunYvItGg3dv2Mxna")
    assert ("cali40" + sel.unique_id())[:31] == "cali40s:4g010_DunYvItGg3dv2Mxna"
    assert make_unique_id("s", 'projectcalico.org/namespace == "default"') == sel.unique_id()


@pytest.mark.parametrize(("text", "canonical"), [
    ("", "all()"),
    ("all()", "all()"),
    ("all( )", "all()"),
    ("global()", "global()"),
    ("has( app )", "has(app)"),
    ("app=='web'", 'app == "web"'),
    ('app != "web"', 'app != "web"'),
    ("v == 'say \"hi\"'", "v == 'say \"hi\"'"),
    ("a == 'x' && b == 'y' && c == 'z'", '(a == "x" && b == "y" && c == "z")'),
    ("a == 'x' || b == 'y' && c == 'z'", '(a == "x" || (b == "y" && c == "z"))'),
    ("(a == 'x' || b == 'y') && c == 'z'", '((a == "x" || b == "y") && c == "z")'),
    ("k in { 'b', 'a', 'b' }", 'k in {"a", "b"}'),
    ("k not in {}", "k not in {}"),
    ("k notin {'a'}", 'k not in {"a"}'),
    ("! has(k)", "!has(k)"),
    ("!!has(k)", "has(k)"),
    ("!(a == 'x' && b == 'y')", '!(a == "x" && b == "y")'),
    ("k contains 'x'", 'k contains "x"'),
    ("k startswith 'x'", 'k starts with "x"'),
    ("k ends  with 'x'", 'k ends with "x"'),
])
def test_canonical_form(text, canonical):
    assert parse_selector(text).canonical() == canonical
    assert normalise(text) == canonical


@pytest.mark.parametrize(("text", "expected"), [
    ("", True), ("all()", True), ("has(app)", True), ("has(nope)", False), ("!has(nope)", True),
    ("app == 'web'", True), ("app == 'db'", False), ("nope == ''", False),
    ("app != 'db'", True), ("nope != 'x'", True),
    ("tier in {'front', 'back'}", True), ("nope in {'x'}", False),
    ("tier not in {'back'}", True), ("nope not in {'x'}", True), ("tier not in {'front'}", False),
    ("env contains 'eu'", True), ("nope contains ''", False),
    ("env starts with 'prod'", True), ("env ends with '-1'", True), ("env ends with '-2'", False),
    ("app == 'web' && tier == 'back'", False), ("app == 'web' || tier == 'back'", True),
    ("!(app == 'web' && tier == 'back')", True),
    ("projectcalico.org/namespace == 'default' && (app == 'db' || has(env))", True),
])
def test_evaluation(text, expected):
    sel = parse_selector(text)
    assert sel.matches(LABELS) is expected
    assert sel.root.evaluate(LABELS) is expected  # the tree walker agrees with the compiled form


@pytest.mark.parametrize(("text", "words"), [
    ("app ==", "quoted string"),
    ("app == web", "quoted string"),
    ("app = 'web'", "'=='"),
    ("app 'web'", "an operator after label 'app'"),
    ("app is 'web'", "expecting an operator"),
    ("(app == 'web'", "')'"),
    ("app == 'web')", "end of the selector"),
    ("app == 'web", "unterminated string"),
    ("app in {'a'", "'}'"),
    ("app in 'a'", "set literal"),
    ("&& a == 'b'", "a label"),
    ("a == 'b' & c == 'd'", "'&&'"),
    ("a == 'b' | c == 'd'", "'||'"),
    ("has(", "an operator after label 'has'"),
    ("$x == 'y'", "unexpected character"),
])
def test_invalid_selectors_say_what_is_wrong(text, words):
    with pytest.raises(SelectorError) as exc:
        parse_selector(text)
    assert words in str(exc.value)
    assert text.strip() in str(exc.value)


def test_prefix_visitor_for_namespace_and_serviceaccount_labels():
    sel = parse_selector("name == 'a' && (has(team) || env in {'x'}) && !owner starts with 'b'")
    pre = sel.with_prefix("pcns.")
    assert pre.canonical() == ('(pcns.name == "a" && (has(pcns.team) || pcns.env in {"x"}) '
                               '&& !pcns.owner starts with "b")')
    assert pre.matches({"pcns.name": "a", "pcns.team": "t"})
    assert not pre.matches({"name": "a", "team": "t"})


def test_required_labels_for_indexing():
    assert parse_selector("a == 'x' && has(b)").required_labels() == {"a": frozenset({"x"}), "b": None}
    assert parse_selector("a in {'x','y'} && a == 'y'").required_labels() == {"a": frozenset({"y"})}
    assert parse_selector("a == 'x' || a == 'y'").required_labels() == {"a": frozenset({"x", "y"})}
    assert parse_selector("a == 'x' || b == 'y'").required_labels() == {}
    assert parse_selector("!has(a)").required_labels() == {}
    assert parse_selector("a != 'x'").required_labels() == {}


def test_deep_nesting_still_evaluates():
    text = "(" * 300 + "a == 'x'" + ")" * 300
    assert parse_selector(text).matches({"a": "x"})
