import evaluate
import pytest

from medinject.eval.letters import exact_match, hamming_score, join_letters, parse_letters
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
