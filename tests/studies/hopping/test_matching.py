"""Study 3's answer and entity matching on crafted continuations: the paper's substring rule, our
strict first-entity rule, and the paper's entity-description classifier."""
import pytest

from modules.studies.hopping.matching import (AnswerInPromptError, answer_aliases, check_answer_not_in_prompt,
                                              classify_description, first_entity_match, mentions)

PARIS = answer_aliases("Paris", ["P", "Paname"])
CLASSES = {"e1": ["Imagine"], "e2": ["John Lennon", "Lennon"], "e3": ["Yoko Ono"]}


def test_answer_aliases_keep_the_label_and_drop_one_character_aliases():
    assert PARIS == ["Paris", "Paname"]
    assert answer_aliases("euro", ["€", "EUR"]) == ["euro", "EUR"]
    assert answer_aliases("X", []) == ["X"]  # the label itself is always kept


@pytest.mark.parametrize("generation, expected", [
    (" Paris, the capital of France.", True),
    (" the city of PARIS", True),                  # case-insensitive
    (" a Parisian city", True),                    # a substring is enough
    (" Lyon\nParis", True),                        # newlines read as spaces
    (" Pari\ns", False),                           # ... so a split word does not match
    (" Paname", True),                             # an alias
    (" Lyon", False),
    (" P", False),                                 # the 1-character alias was dropped
])
def test_mentions_is_the_paper_substring_rule(generation, expected):
    assert mentions(generation, PARIS) is expected


def test_mentions_ignores_empty_aliases():
    assert mentions(" anything", ["", "Paris"]) is False


@pytest.mark.parametrize("generation, expected", [
    (" Paris", True),
    ("Paris.", True),
    ("  \n Paris is", True),                       # leading whitespace, newline included
    (" the Paris of the north", True),             # an optional article
    (" The paris", True),
    (" a Paname", True),
    (" Parisian", False),                          # not the entity, though the substring rule accepts it
    (" Paris2", False),
    (" it is Paris", False),                       # not the first entity
    (" the", False),
    ("", False),
])
def test_first_entity_match_is_strict(generation, expected):
    assert first_entity_match(generation, PARIS) is expected


def test_parisian_matches_only_the_substring_rule():
    assert mentions(" Parisian", ["Paris"]) and not first_entity_match(" Parisian", ["Paris"])


def test_first_entity_match_takes_any_alias_and_multiword_ones():
    assert first_entity_match(" the United States of America", ["United States", "USA"])
    assert first_entity_match(" USA!", ["United States", "USA"])
    assert not first_entity_match(" United Statesman", ["United States"])


@pytest.mark.parametrize("generation", [
    ": Yoko Ono is a Japanese artist", ": yoko ono, an artist", ": Yoko Ono.", ": Yoko Ono: artist",
    "Yoko Ono: a Japanese artist"])
def test_each_description_pattern(generation):
    assert classify_description(generation, CLASSES) == "e3"


@pytest.mark.parametrize("generation", [
    "Yoko Ono is an artist",      # no colon
    ": Yoko Onomatopoeia",        # no boundary after the alias
    ":Yoko Ono is",               # no space after the colon
])
def test_descriptions_that_name_no_class(generation):
    assert classify_description(generation, CLASSES) == "other"


def test_classifier_priority_is_the_mapping_order():
    both = ": John Lennon and Imagine: a song"
    assert classify_description(both, CLASSES) == "e1"                       # e1 before e2
    assert classify_description(": Yoko Ono, wife of Lennon: a singer", CLASSES) == "e2"  # e2 before e3
    reordered = {"e3": CLASSES["e3"], "e2": CLASSES["e2"], "e1": CLASSES["e1"]}
    assert classify_description(": Yoko Ono, wife of Lennon: a singer", reordered) == "e3"


def test_check_answer_not_in_prompt_raises_one_line():
    check_answer_not_in_prompt("the capital of the country of Mount Fuji is", ["Tokyo"], "q002")
    with pytest.raises(AnswerInPromptError) as error:
        check_answer_not_in_prompt("the country of citizenship of\nthe composer of Finlandia is",
                                   ["Finland", "Suomi"], "query q9")
    message = str(error.value)
    assert "\n" not in message and "query q9" in message and "'Finland'" in message
    assert isinstance(error.value, ValueError)
