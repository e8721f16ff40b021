"""The two letter rules: medinject's lenient reading and the released one (on a hand-worked table of
outputs covering both verdicts), the exact-match and Hamming scores, and the letter_match evaluate
module loaded offline from the package."""

import evaluate
import pytest

from medinject.eval.letters import exact_match, hamming_score, join_letters, parse_letters, parse_letters_released
from medinject.eval.runner import metric_module

OPTIONS = ("A", "B", "C", "D", "E")

CASES = [
    ("A, C", ("A", "C")),
    ("a c", ("A", "C")),
    ("C,A", ("A", "C")),
    ("Réponse : B", ("B",)),
    ("Réponses: b, d", ("B", "D")),
    ("Answer - E", ("E",)),
    ("A et C", ("A", "C")),
    ("La bonne réponse est D.", ("D",)),
    ("B. Metformine", ("B",)),
    ("il a de la fièvre", ()),  # a lone lower-case letter inside a sentence is a word
    ("F", ()),  # outside the options
    ("A, F", ("A",)),
    ("A, A, C", ("A", "C")),
    ("", ()),
    ("\n\nC\nA est faux car...", ("C",)),  # only the first non-empty line counts
    ("L'aspirine", ()),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_parse_letters(text, expected):
    assert parse_letters(text, OPTIONS) == expected


def test_options_limit_what_is_read():
    assert parse_letters("A, D", ("A", "B", "C")) == ("A",)


def test_scores():
    assert exact_match("A, C", "A, C") == 1.0
    assert exact_match("A", "A, C") == 0.0
    assert exact_match("", "A") == 0.0
    assert hamming_score("A, B", "A, C") == pytest.approx(1 / 3)
    assert hamming_score("A, C", "C, A") == 1.0
    assert join_letters(("A", "C")) == "A, C"


def test_letter_match_evaluate_module_loads_offline_from_the_package():
    metric = evaluate.load(metric_module("letter_match"), keep_in_memory=True)
    scores = metric.compute(predictions=["A, C", "B", "", "A, B"], references=["A, C", "A", "C", "A, C"])
    assert scores["exact_match"] == pytest.approx(1 / 4)
    assert scores["hamming"] == pytest.approx((1 + 0 + 0 + 1 / 3) / 4)


# The study's released rule, worked out by hand for each raw output (options A-D unless a row says
# otherwise): upper-case the stripped text; any letter outside the options or any character outside
# `, ; / | + space newline . ( ) :` empties it; else the option letters in written order, each once;
# a single-answer item needs exactly one letter.
ABCD = ("A", "B", "C", "D")
RELEASED_CASES = [
    # (raw output, single answer?, expected letters, options)
    ("A", True, ("A",), ABCD),
    ("A", False, ("A",), ABCD),
    ("a", True, ("A",), ABCD),  # lower case is upper-cased
    (" b ", True, ("B",), ABCD),  # stripped
    ("\tA\n", True, ("A",), ABCD),  # stripped at both ends
    ("d", False, ("D",), ABCD),
    ("A, C", False, ("A", "C"), ABCD),
    ("C, A", False, ("C", "A"), ABCD),  # written order kept (EM compares sets)
    ("A,C", False, ("A", "C"), ABCD),
    ("A C", False, ("A", "C"), ABCD),
    ("AC", False, ("A", "C"), ABCD),  # no separator needed
    ("a, c", False, ("A", "C"), ABCD),
    ("A;C", False, ("A", "C"), ABCD),
    ("A/C", False, ("A", "C"), ABCD),
    ("A|C", False, ("A", "C"), ABCD),
    ("A+C", False, ("A", "C"), ABCD),
    ("A\nC", False, ("A", "C"), ABCD),
    ("A,\nC", False, ("A", "C"), ABCD),
    ("A. C.", False, ("A", "C"), ABCD),
    ("A , C ;", False, ("A", "C"), ABCD),
    ("A.", True, ("A",), ABCD),
    ("(A)", True, ("A",), ABCD),
    ("A)", True, ("A",), ABCD),
    ("A:", True, ("A",), ABCD),
    ("A, A", False, ("A",), ABCD),  # duplicates read once
    ("A, A", True, ("A",), ABCD),  # one letter after de-duplication: a valid single answer
    ("B, D, B", False, ("B", "D"), ABCD),
    ("bad", False, ("B", "A", "D"), ABCD),  # a French-looking word made only of option letters
    ("D C", False, ("D", "C"), ABCD),
    ("D C", True, (), ABCD),  # two letters for a single-answer item
    ("A, C", True, (), ABCD),
    ("CAB", True, (), ABCD),
    ("E", True, (), ABCD),  # a letter outside the options
    ("A, E", False, (), ABCD),  # one stray letter empties the whole answer
    ("C", True, (), ("A", "B")),
    ("La réponse est B", True, (), ABCD),  # stray words
    ("Réponse : A", True, (), ABCD),
    ("B. Metformine", True, (), ABCD),
    ("A et C", False, (), ABCD),  # "ET": E and T are letters outside the options
    ("Ä", True, (), ABCD),  # an alphabetic character that is not an option
    ("", True, (), ABCD),  # empty
    ("   ", False, (), ABCD),
    ("A!", True, (), ABCD),  # punctuation outside the allowed set
    ("A-C", False, (), ABCD),
    ("A & C", False, (), ABCD),
    ("[A]", True, (), ABCD),
    ("*A*", True, (), ABCD),
    ("A'", True, (), ABCD),
    ("1", True, (), ABCD),  # digits are not separators
    ("A1", True, (), ABCD),
    ("A\tC", False, (), ABCD),  # a tab inside is not a separator (only space and newline are)
]


@pytest.mark.parametrize("text,single,expected,options", RELEASED_CASES)
def test_released_letter_rule(text, single, expected, options):
    assert parse_letters_released(text, options, single) == expected


def test_the_released_table_is_large_enough_and_covers_both_verdicts():
    assert len(RELEASED_CASES) >= 40
    assert sum(1 for c in RELEASED_CASES if c[2]) >= 15 and sum(1 for c in RELEASED_CASES if not c[2]) >= 15
