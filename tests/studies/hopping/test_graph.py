"""Study 3's fictional knowledge graph and its tokenizer: byte-for-byte determinism by seed, names of
two shared pieces, complete functional facts with their alias copies, two-hop queries that are the
composition of their facts, Grokked's split definitions, the sizes the defaults give, and one-line
errors for bad settings and single-token names."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from modules.core.params import ParamsError, load
from modules.studies.hopping.data.graph import (COPULA, DEFAULT_RELATIONS, FIRST_PIECES, IDENTITY, LAST_PIECES,
                                                RELATIONS, SCHEMAS, SPLITS, GraphConfig, GraphError, Relation,
                                                generate_graph, graph_statistics, read_tables, resolve_relations,
                                                training_texts, write_tables)
from modules.studies.hopping.data.tokenizer import (COPY_FORMAT, EOS, PAD, TokenizerError, build_graph_tokenizer,
                                                    check_name_tokens, graph_vocabulary)

TINY = dict(entities={"person": 24, "city": 6, "work": 10, "company": 6}, test_size=20, ood_fraction=0.3, phi=2.0)


@pytest.fixture(scope="module")
def tables():
    return generate_graph(GraphConfig())


@pytest.fixture(scope="module")
def tiny():
    return generate_graph(GraphConfig(**TINY))


def primary_facts(tables):
    facts, names = tables["facts"], dict(zip(tables["entities"]["entity_id"], tables["entities"]["name"]))
    return facts[(facts["relation"] != IDENTITY.name) & (facts["subject_text"] == facts["subject_id"].map(names))]


def fact_keys(rows, hop: int) -> list[tuple]:
    e, r = ("e1_id", "r1") if hop == 1 else ("e2_id", "r2")
    return list(zip(rows[e], rows[r]))


def test_parquet_files_are_deterministic_by_seed(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_tables(generate_graph(GraphConfig(**TINY, seed=seed)), tmp_path / name)
    for table in SCHEMAS:
        a, b, c = ((tmp_path / d / f"{table}.parquet").read_bytes() for d in "abc")
        assert a == b, f"{table}: same seed, different bytes"
        if table != "relations":   # the relations table does not depend on the seed
            assert a != c, f"{table}: another seed, same bytes"
    again = read_tables(tmp_path / "a")
    assert list(again["twohop"].columns) == SCHEMAS["twohop"].names


def test_default_sizes(tables):
    assert graph_statistics(tables) == {
        "entities_city": 40, "entities_company": 40, "entities_person": 240, "entities_work": 80, "entities": 400,
        "aliases": 40, "relations": 10, "atomic_facts": 1480, "atomic_ood": 222, "fact_rows": 2050,
        "twohop_train": 3774, "twohop_test_id": 100, "twohop_test_ood": 100, "training_texts": 5824}
    assert len(training_texts(tables)) == 5824


def test_names_are_two_shared_pieces_unique_and_never_template_words(tables):
    entities = tables["entities"]
    aliases = [a for a in entities["alias"] if a]
    names = [*entities["name"], *aliases]
    assert len(set(names)) == len(names) and "" not in set(entities["name"])
    assert len(aliases) == round(0.1 * len(entities))
    firsts, lasts = zip(*(n.split() for n in names))
    assert set(firsts) <= set(FIRST_PIECES) and set(lasts) <= set(LAST_PIECES)
    assert not set(FIRST_PIECES) & set(LAST_PIECES)
    assert min(lasts.count(p) for p in set(lasts)) >= 2          # a last piece never identifies an entity
    assert sum(firsts.count(p) >= 2 for p in set(firsts)) / len(set(firsts)) > 0.8
    template_words = {w for r in RELATIONS.values() for w in r.words()} | set(IDENTITY.words()) | {COPULA}
    assert not {p.lower() for p in (*FIRST_PIECES, *LAST_PIECES)} & template_words


def test_every_entity_has_one_fact_per_relation_of_its_type(tables):
    entities, facts, relations = tables["entities"], tables["facts"], tables["relations"]
    kind = dict(zip(entities["entity_id"], entities["type"]))
    assert len(set(entities["type"])) >= 4
    assert list(relations["relation"]) == [*DEFAULT_RELATIONS, IDENTITY.name]
    atomic = primary_facts(tables)
    for entity_id, entity_type in kind.items():
        own = sorted(r for r in DEFAULT_RELATIONS if RELATIONS[r].subject_type == entity_type)
        assert sorted(atomic.loc[atomic["subject_id"] == entity_id, "relation"]) == own
    assert (facts.groupby(["subject_id", "relation"])["object_id"].nunique() == 1).all()   # functional
    assert not facts.duplicated(["subject_text", "relation"]).any()
    for row in atomic.itertuples():
        relation = RELATIONS[row.relation]
        assert (kind[row.subject_id], kind[row.object_id]) == (relation.subject_type, relation.object_type)
        assert row.object_id != row.subject_id


def test_fact_texts_alias_copies_and_identity_facts(tables):
    entities, facts = tables["entities"], tables["facts"]
    name = dict(zip(entities["entity_id"], entities["name"]))
    first = facts.iloc[0]
    assert first["prompt"] == f"the {first['relation']} of {first['subject_text']} is"
    assert (facts["answer"] == facts["object_id"].map(name)).all()                     # answers: primary names
    atomic = primary_facts(tables).set_index(["subject_id", "relation"])
    for entity_id, alias in zip(entities["entity_id"], entities["alias"]):
        own = facts[facts["subject_id"] == entity_id]
        if alias:
            copies = own[own["subject_text"] == alias]
            assert len(copies) == (own["subject_text"] == name[entity_id]).sum()
            for row in copies[copies["relation"] != IDENTITY.name].itertuples():
                assert (row.object_id, row.ood) == tuple(atomic.loc[(entity_id, row.relation), ["object_id", "ood"]])
        identity = own[own["relation"] == IDENTITY.name]
        assert (identity["object_id"] == entity_id).all() and (identity["answer"] == name[entity_id]).all()
        assert len(identity) == (2 if alias else 1) and not identity["ood"].any()
    assert primary_facts(tables)["ood"].sum() == round(0.15 * len(primary_facts(tables)))
    no_identity = generate_graph(GraphConfig(**TINY, identity_relation=False))
    assert IDENTITY.name not in set(no_identity["facts"]["relation"]) | set(no_identity["relations"]["relation"])


def test_two_hop_queries_compose_their_facts(tables):
    twohop, entities = tables["twohop"], tables["entities"]
    name = dict(zip(entities["entity_id"], entities["name"]))
    obj = primary_facts(tables).set_index(["subject_id", "relation"])["object_id"].to_dict()
    assert list(dict.fromkeys(twohop["split"])) == list(SPLITS)
    assert twohop["query_id"].is_unique and twohop["prompt"].is_unique
    for q in twohop.itertuples():
        assert obj[(q.e1_id, q.r1)] == q.e2_id and obj[(q.e2_id, q.r2)] == q.e3_id and q.e3_id != q.e1_id
        assert (q.e1_name, q.e2_name, q.e3_name) == (name[q.e1_id], name[q.e2_id], name[q.e3_id])
        assert RELATIONS[q.r1].object_type == RELATIONS[q.r2].subject_type
        assert q.t1_text == f"the {q.r1} of {q.e1_name}"
        assert q.prompt == f"the {q.r2} of the {q.r1} of {q.e1_name} is"
        assert q.first_hop_prompt == f"the {q.r1} of {q.e1_name} is"
        assert q.second_hop_prompt == f"the {q.r2} of {q.e2_name} is"


@pytest.mark.parametrize("which", ["default", "tiny"])
def test_split_definitions(tables, tiny, which):
    tables = tables if which == "default" else tiny
    twohop = tables["twohop"]
    atomic = primary_facts(tables)
    ood = dict(zip(zip(atomic["subject_id"], atomic["relation"]), atomic["ood"]))
    split = {s: twohop[twohop["split"] == s] for s in SPLITS}
    for s in SPLITS:
        states = [ood[f] for hop in (1, 2) for f in fact_keys(split[s], hop)]
        assert states and set(states) == ({True} if s == "test_ood" else {False}), s
    trained = set(fact_keys(split["train"], 1)) | set(fact_keys(split["train"], 2))
    assert set(fact_keys(split["test_id"], 1)) | set(fact_keys(split["test_id"], 2)) <= trained
    assert not set(split["train"]["prompt"]) & (set(split["test_id"]["prompt"]) | set(split["test_ood"]["prompt"]))
    n_id = int((~atomic["ood"]).sum())
    phi = 3.0 if which == "default" else TINY["phi"]
    assert len(split["train"]) == round(phi * n_id)         # neither config is capped


def test_phi_beyond_the_paths_trains_every_id_path_but_the_held_out():
    config = GraphConfig(**{**TINY, "phi": 1000.0})
    twohop = generate_graph(config)["twohop"]
    uncapped = generate_graph(GraphConfig(**TINY))["twohop"]
    assert set(twohop.loc[twohop["split"] != "train", "prompt"]) == set(
        uncapped.loc[uncapped["split"] != "train", "prompt"])      # the held-out draw does not depend on phi
    # every ID path: the tiny graph's, counted independently of the generator
    atomic = primary_facts(generate_graph(config))
    obj = atomic.set_index(["subject_id", "relation"])["object_id"].to_dict()
    ood = atomic.set_index(["subject_id", "relation"])["ood"].to_dict()
    paths = [(e1, r1, r2) for (e1, r1), e2 in obj.items() for (s, r2), e3 in obj.items()
             if s == e2 and e3 != e1 and not ood[(e1, r1)] and not ood[(e2, r2)]]
    assert (twohop["split"] == "train").sum() == len(paths) - (twohop["split"] == "test_id").sum()


def test_training_texts_are_every_fact_and_the_training_queries(tiny):
    texts = training_texts(tiny)
    facts, twohop = tiny["facts"], tiny["twohop"]
    train = twohop[twohop["split"] == "train"]
    assert texts == [f"{p} {a}" for p, a in zip(facts["prompt"], facts["answer"])] + [
        f"{p} {a}" for p, a in zip(train["prompt"], train["e3_name"])]
    held_out = set(twohop.loc[twohop["split"] != "train", "prompt"])
    assert not {t.rsplit(" is ", 1)[0] + " is" for t in texts} & held_out


def test_tokenizer_vocabulary_order_and_names_of_two_tokens(tiny, tmp_path):
    tokenizer = build_graph_tokenizer(tiny)
    vocabulary = graph_vocabulary(tiny)
    pieces = sorted({p for n in [*tiny["entities"]["name"], *tiny["entities"]["alias"]] for p in n.split()})
    assert vocabulary == [PAD, EOS, "the", DEFAULT_RELATIONS[0], "of", *DEFAULT_RELATIONS[1:], "name", COPULA,
                          *COPY_FORMAT, *pieces]
    assert [tokenizer.convert_tokens_to_ids(w) for w in vocabulary] == list(range(len(vocabulary)))
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    for name in tiny["entities"]["name"]:
        assert len(tokenizer(name)["input_ids"]) == 2
    ids = tokenizer(training_texts(tiny))["input_ids"]
    assert max(map(len, ids)) == 11        # "the r2 of the r1 of First Last is First Last"
    name = tiny["entities"]["name"][0]
    assert tokenizer.convert_ids_to_tokens(tokenizer(f"{name}: {name}, x:")["input_ids"]) == [
        *name.split(), ":", *name.split(), ",", "x", ":"]
    with pytest.raises(Exception, match="WordLevel"):
        tokenizer("the spouse of Nobody Known is")
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(training_texts(tiny)[:50])["input_ids"] == ids[:50]
    assert build_graph_tokenizer(vocabulary).get_vocab() == tokenizer.get_vocab()


def test_single_token_name_is_a_one_line_error(tiny):
    entities = tiny["entities"].copy()
    entities.loc[3, "name"] = entities.loc[3, "name"].split()[0]
    with pytest.raises(TokenizerError, match=f"entity name '{entities.loc[3, 'name']}' is a single token") as error:
        build_graph_tokenizer({**tiny, "entities": entities})
    assert "\n" not in str(error.value)
    tokenizer = build_graph_tokenizer({**tiny, "entities": entities}, min_name_tokens=1)
    with pytest.raises(TokenizerError, match="at least 3 tokens"):
        check_name_tokens(tokenizer, tiny["entities"]["name"], min_name_tokens=3)


@pytest.mark.parametrize("changes, words", [
    ({"relations": ("spouse", "sibling")}, "unknown relation 'sibling'"),
    ({"relations": ("spouse", "spouse")}, "more than once"),
    ({"relations": ("spouse", "name")}, "identity relation"),
    ({"relations": ()}, "non-empty"),
    ({"entities": {"person": 10, "planet": 3}}, "unknown entity type"),
    ({"entities": {"person": -1}}, "non-negative"),
    ({"entities": {"person": 10, "city": 5}, "relations": ("spouse", "employer")}, "needs at least 1 company"),
    ({"entities": {"person": 1, "city": 5}, "relations": ("spouse",)}, "needs at least 2 person"),
])
def test_bad_config_is_a_one_line_error(changes, words):
    with pytest.raises(GraphError, match=words) as error:
        GraphConfig(**changes)
    assert "\n" not in str(error.value)


def test_relation_without_template_and_params_loading():
    table = {**RELATIONS, "sibling": Relation("sibling", None, "person", "person"),
             "rival": Relation("rival", "the Rival of {}", "person", "person")}
    with pytest.raises(GraphError, match="relation 'sibling' has no template"):
        resolve_relations(["spouse", "sibling"], table)
    with pytest.raises(GraphError, match="lowercase words"):
        resolve_relations(["rival"], table)
    config = load(GraphConfig, {"seed": 1, "entities": 2000, "relations": list(RELATIONS), "phi": 3.0,
                                "ood_fraction": 0.1, "test_size": 2000}, "hopping.graph", complete=False)
    assert config.entity_counts() == {"person": 1000, "city": 250, "country": 50, "work": 500, "company": 200}
    with pytest.raises(ParamsError, match="hopping.graph.ood_fraction"):
        load(GraphConfig, {"ood_fraction": 0.95}, "hopping.graph", complete=False)
    with pytest.raises(ParamsError, match="unknown relation"):
        load(GraphConfig, {"relations": ["spouse", "cousin"]}, "hopping.graph", complete=False)
