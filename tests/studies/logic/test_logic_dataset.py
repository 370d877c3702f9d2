"""Dataset splits, Parquet bytes, proportions, parameter errors, few-shot prompts, flip pairs."""
import pandas as pd
import pytest

from modules.studies.logic.data import (COLUMNS, MAX_DEPTH, TRACE_COLUMNS, end_compact_prompt, few_shot_prompts,
                                generate_flip_pairs, generate_splits, generate_traces, parse_compact_prompt,
                                read_split, read_traces, read_training_rows, solve_compact, solve_natural,
                                training_files, write_splits, write_traces)

SIZES = {"train": 600, "val": 100, "test": 200}


@pytest.fixture(scope="module")
def frames():
    return generate_splits(11, SIZES, depth=3)


def _bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_columns_ids_and_types(frames, tmp_path):
    for split, frame in frames.items():
        assert tuple(frame.columns) == COLUMNS
        assert len(frame) == SIZES[split] and frame.id.is_unique and (frame.split == split).all()
        assert frame.id.iloc[0] == f"logic-d3-s11-{split}-0000000"
    read = read_split(write_splits(frames, tmp_path)["val"])
    pd.testing.assert_frame_equal(read, frames["val"])
    plain = pd.read_parquet(tmp_path / "val.parquet")
    assert {c: str(t) for c, t in plain.dtypes.items()} == {
        c: ("int64" if c == "depth" else "bool" if c in ("linear_value", "logop_value_a", "logop_value_b",
                                                          "derivable") else "str") for c in COLUMNS}


def test_parquet_bytes_deterministic(frames, tmp_path):
    write_splits(frames, tmp_path / "a")
    write_splits(generate_splits(11, SIZES, depth=3), tmp_path / "b")
    write_splits(generate_splits(12, SIZES, depth=3), tmp_path / "c")
    a, b, c = _bytes(tmp_path / "a"), _bytes(tmp_path / "b"), _bytes(tmp_path / "c")
    assert sorted(a) == ["test.parquet", "train.parquet", "val.parquet"]  # no temp files left
    assert a == b
    assert all(a[name] != c[name] for name in a)


def test_no_duplicates_within_or_across_splits(frames):
    prompts = pd.concat([f.prompt for f in frames.values()])
    assert prompts.is_unique
    assert pd.concat([f.id for f in frames.values()]).is_unique


def test_excluded_prompts_are_redrawn(frames):
    exclude = set(frames["test"].prompt[:5])
    again = generate_splits(11, {"test": SIZES["test"]}, depth=3, exclude=exclude)["test"]
    assert again.prompt.is_unique and not again.prompt.isin(exclude).any()
    assert len(again) == SIZES["test"] and set(frames["test"].prompt[5:]) <= set(again.prompt)


def test_held_out_splits_stable_when_train_grows(frames):
    bigger = generate_splits(11, {**SIZES, "train": 900}, depth=3)
    for split in ("val", "test"):
        pd.testing.assert_frame_equal(bigger[split], frames[split])


def test_query_twins_pair_every_problem_with_the_other_chains_query(frames):
    twinned = generate_splits(11, SIZES, depth=3, query_twins=["train"])
    for split in ("val", "test"):  # held-out splits are drawn as before
        pd.testing.assert_frame_equal(twinned[split], frames[split])
    train = twinned["train"]
    assert len(train) == SIZES["train"] and train.id.is_unique
    assert not train.prompt.isin(pd.concat([frames["val"].prompt, frames["test"].prompt])).any()
    first, second = train.iloc[0::2].reset_index(drop=True), train.iloc[1::2].reset_index(drop=True)
    assert (first.query_chain != second.query_chain).all()
    assert (train.query_chain == "linear").mean() == 0.5
    for a, b in zip(first.prompt, second.prompt):
        st_a, st_b = parse_compact_prompt(a), parse_compact_prompt(b)
        assert (st_a.rules, st_a.facts) == (st_b.rules, st_b.facts) and st_a.query != st_b.query
    for row in train.itertuples():
        assert row.answer == solve_compact(row.prompt)
    again = generate_splits(11, SIZES, depth=3, query_twins=["train"])["train"]
    pd.testing.assert_frame_equal(again, train)


def _path_lengths(st, var):
    """Rule applications from the sources to `var`, per branch, walking the rules backwards."""
    rule = next((r for r in st.rules if r.conclusion == var), None)
    if rule is None:
        return [0]
    return [1 + n for p in rule.premises for n in _path_lengths(st, p)]


@pytest.mark.parametrize("depth", [2, 3, 4, 5, MAX_DEPTH])
def test_problem_structure(depth):
    frame = generate_splits(3, {"s": 300}, depth=depth, logop_share=0.5)["s"]
    for row in frame.itertuples():
        st = parse_compact_prompt(row.prompt)
        variables = [v for r in st.rules for v in (*r.premises, r.conclusion)]
        merges = [r for r in st.rules if r.op]
        assert len(merges) == 1 and merges[0].op == row.operator
        hops = depth - 1  # a chain of depth d has d levels
        assert len(set(variables)) == 3 + 2 * hops + (hops - 1) // 2
        assert {v for v, _ in st.facts} == {row.linear_source, row.logop_source_a, row.logop_source_b}
        assert {v for v, _ in st.facts} == set(variables) - {r.conclusion for r in st.rules}
        assert _path_lengths(st, row.query_var) == ([hops] * (2 if row.query_chain == "logop" else 1))
        a = next(r for r in st.rules if r.op).premises[0]
        assert _path_lengths(st, a) == [(hops - 1) // 2]  # pre-merge implications
        assert row.logop_source_a in {v for v in variables if _reaches(st, v, a)}
        assert row.source_truth == "".join("T" if v else "F" for v in (row.logop_value_a, row.logop_value_b)) \
            + "/" + ("T" if row.linear_value else "F")
        assert row.derivable == (row.answer != "undetermined")


def _reaches(st, source, target):
    frontier, seen = [source], set()
    while frontier:
        v = frontier.pop()
        seen.add(v)
        frontier += [r.conclusion for r in st.rules if v in r.premises and r.conclusion not in seen]
    return target in seen


@pytest.mark.parametrize("depth", [2, 3, 4, 7])
def test_chain_rule_order_keeps_the_interleaving_and_writes_each_chain_in_proof_order(depth):
    shuffled = generate_splits(4, {"s": 200}, depth=depth, logop_share=0.5)["s"]
    ordered = generate_splits(4, {"s": 200}, depth=depth, logop_share=0.5, rule_order="chain")["s"]
    same = ["answer", "query_var", "operator", "query_chain", "source_truth"]
    assert shuffled[same].equals(ordered[same])  # the same problems, drawn alike
    moved = 0
    for before, after in zip(shuffled.prompt, ordered.prompt):
        st_before, st_after = parse_compact_prompt(before), parse_compact_prompt(after)
        assert sorted(map(str, st_before.rules)) == sorted(map(str, st_after.rules))
        assert st_before.facts == st_after.facts and st_before.query == st_after.query
        linear = {v for v, _ in st_after.facts} - {p for r in st_after.rules if r.op for p in r.premises}
        linear = {v for s in linear for v in [s] + _descendants(st_after, s)}
        assert [r.conclusion in linear for r in st_before.rules] == \
            [r.conclusion in linear for r in st_after.rules]  # each chain keeps its slots
        written = {r.conclusion: i for i, r in enumerate(st_after.rules)}
        for i, rule in enumerate(st_after.rules):  # every premise's own rule is written earlier
            assert all(written.get(p, -1) < i for p in rule.premises)
        moved += before != after
    assert [solve_compact(prompt) for prompt in ordered.prompt] == ordered.answer.tolist()
    assert depth == 2 or moved > 50


def _descendants(st, v):
    return [r.conclusion for r in st.rules if v in r.premises] + \
        [d for r in st.rules if v in r.premises for d in _descendants(st, r.conclusion)]


def test_proportions_near_parameters():
    frame = generate_splits(5, {"s": 20000}, depth=3, logop_share=0.8)["s"]
    assert abs((frame.query_chain == "logop").mean() - 0.8) < 0.015
    assert abs((frame.operator == "and").mean() - 0.5) < 0.015
    for column in ("linear_value", "logop_value_a", "logop_value_b", "derivable"):
        assert abs(frame[column].mean() - 0.5) < 0.015
    for op, share in (("or", 0.75), ("and", 0.25)):
        assert abs(frame[(frame.operator == op) & (frame.query_chain == "logop")].derivable.mean() - share) < 0.02
    other = generate_splits(5, {"s": 3000}, depth=2, logop_share=0.3, operators=["or"])["s"]
    assert abs((other.query_chain == "logop").mean() - 0.3) < 0.03 and set(other.operator) == {"or"}
    assert set(generate_splits(5, {"s": 200}, logop_share=0.0)["s"].query_chain) == {"linear"}
    assert set(generate_splits(5, {"s": 200}, logop_share=1)["s"].query_chain) == {"logop"}


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": -1}, r"depth must be an int in \[2, 10\], got -1"),
    ({"depth": 1}, r"depth must be an int in \[2, 10\], got 1"),
    ({"depth": 11}, r"depth must be an int in \[2, 10\], got 11 \(depth 11 needs 27 variables, only 26"),
    ({"depth": 3.0}, r"depth must be an int"),
    ({"logop_share": 1.2}, r"logop_share must be a number in \[0, 1\], got 1.2"),
    ({"logop_share": -0.1}, r"logop_share must be a number in \[0, 1\]"),
    ({"operators": ["and", "xor"]}, r"operators must be .*\['and', 'or'\], got \['and', 'xor'\]"),
    ({"operators": []}, r"operators must be a non-empty list"),
    ({"operators": ["or", "or"]}, r"operators must be .*distinct"),
    ({"sizes": {"train": 0}}, r"sizes\['train'\] must be an int >= 1, got 0"),
    ({"sizes": {"train": -5}}, r"sizes\['train'\] must be an int >= 1, got -5"),
    ({"sizes": {}}, r"sizes must be a non-empty dict"),
    ({"sizes": {"../x": 5}}, r"sizes: split name must match"),
    ({"seed": "1"}, r"seed must be an int"),
    ({"rule_order": "sorted"}, r"rule_order must be one of \['shuffled', 'chain'\], got 'sorted'"),
    ({"query_twins": ["val"]}, r"query_twins names split\(s\) \['val'\] that are not in sizes \['train'\]"),
    ({"query_twins": ["train"], "sizes": {"train": 9}}, r"query_twins: split\(s\) \['train'\] must have an even size"),
    ({"query_twins": "train"}, r"query_twins must be a list of split names, got 'train'"),
])
def test_bad_parameters(kwargs, match):
    args = {"seed": 0, "sizes": {"train": 10}, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_splits(**args)


def test_write_splits_rejects_bad_frames_and_keeps_old_files(frames, tmp_path):
    write_splits(frames, tmp_path)
    before = _bytes(tmp_path)
    broken = frames["val"].drop(columns=["nl_answer"])
    with pytest.raises(ValueError, match=r"frames\['val'\] columns must be exactly"):
        write_splits({"test": frames["val"], "val": broken}, tmp_path)
    bad_type = frames["val"].assign(depth="three")
    with pytest.raises(Exception):
        write_splits({"val": bad_type}, tmp_path)
    assert _bytes(tmp_path) == before  # nothing half-written, nothing replaced


def test_few_shot_prompts(frames):
    pool, tests = frames["train"], list(frames["test"].nl_prompt[:50])
    prompts = few_shot_prompts(tests, pool, k=4, seed=1)
    assert prompts == few_shot_prompts(tests, pool, k=4, seed=1)
    shots = set(pool.nl_prompt + " " + pool.nl_answer)
    for text, nl_prompt, nl_answer in zip(prompts, tests, frames["test"].nl_answer):
        lines = text.split("\n")
        assert len(lines) == 5 and lines[-1] == nl_prompt and text.endswith("Answer:")
        assert all(line in shots for line in lines[:4])
        assert solve_natural(text) == nl_answer
    own = few_shot_prompts(list(pool.nl_prompt[:20]), pool, k=3)
    assert all(p.split("\n")[-1] not in p.split("\n")[:-1] for p in own)
    with pytest.raises(ValueError, match=r"k must be an int in \[0, 599\]"):
        few_shot_prompts(tests, pool, k=600)


def test_flip_pairs(frames):
    exclude = set(frames["train"].prompt)
    pairs = generate_flip_pairs(4, 300, depth=3, k=4, exclude=exclude)
    pd.testing.assert_frame_equal(pairs, generate_flip_pairs(4, 300, depth=3, k=4, exclude=exclude))
    assert pairs.pair_id.is_unique and len(pairs) == 300
    assert not (set(pairs.prompt_logop) | set(pairs.prompt_linear)) & exclude
    for row in pairs.itertuples():
        logop, linear = row.prompt_logop.split(), row.prompt_linear.split()
        assert row.prompt_logop.split(" query ")[0] == row.prompt_linear.split(" query ")[0]  # byte-identical
        assert len(logop) == len(linear) and [i for i, (x, y) in enumerate(zip(logop, linear)) if x != y] \
            == [len(logop) - 2]
        st = parse_compact_prompt(row.prompt_logop)
        assert [r.op for r in st.rules if r.op] == ["or"]
        assert sorted(t for _, t in st.facts) == [False, True, True]
        true_sources = {v for v, t in st.facts if t}
        assert row.first_logop != row.first_linear and {row.first_logop, row.first_linear} == true_sources
        assert row.answer_logop.split()[0] == row.first_logop and row.answer_linear.split()[0] == row.first_linear
        assert solve_compact(row.prompt_logop) == row.answer_logop
        assert solve_compact(row.prompt_linear) == row.answer_linear
        nl_logop, nl_linear = row.nl_prompt_logop.split("\n"), row.nl_prompt_linear.split("\n")
        assert len(nl_logop) == 5 and nl_logop[:4] == nl_linear[:4]  # shared solved examples
        assert nl_logop[-1].replace(f"of {row.query_logop}.", f"of {row.query_linear}.") == nl_linear[-1]
        assert solve_natural(row.nl_prompt_logop) == row.nl_answer_logop
        assert solve_natural(row.nl_prompt_linear) == row.nl_answer_linear
    # Depth 3: the proof's first variable is the true source, itself a merge antecedent.
    a_true = (pairs.answer_logop.str.split().str[0] == pairs.prompt_logop.str.extract(r"([A-Z]) or")[0]).mean()
    assert 0.35 < a_true < 0.65  # either LogOp source takes the true role
    with pytest.raises(ValueError, match=r"n must be an int >= 1"):
        generate_flip_pairs(0, 0)


def test_prompt_end_query_stops_compact_prompts_at_the_query_variable(frames):
    ended = generate_splits(11, SIZES, depth=3, prompt_end="query")
    for split, frame in frames.items():
        assert ended[split].prompt.tolist() == [p.removesuffix(" answer") for p in frame.prompt]
        assert [end_compact_prompt(p, "answer") for p in ended[split].prompt] == frame.prompt.tolist()
        pd.testing.assert_frame_equal(ended[split].drop(columns="prompt"), frame.drop(columns="prompt"))
    assert [solve_compact(p) for p in ended["test"].prompt] == ended["test"].answer.tolist()
    pairs = generate_flip_pairs(4, 20, depth=2, k=0, prompt_end="query")
    assert pairs.prompt_logop.str.match(r".* query [A-Z]$").all()
    with pytest.raises(ValueError, match=r"prompt_end must be one of \['answer', 'query'\], got 'end'"):
        generate_splits(11, SIZES, prompt_end="end")


def test_traces_are_deterministic_distinct_and_written_atomically(tmp_path):
    traces = generate_traces(7, 300, depth=5, prompt_end="query")
    assert traces.columns.tolist() == list(TRACE_COLUMNS) and traces.id.is_unique and traces.prompt.is_unique
    assert (traces.depth == 5).all() and traces.prompt.str.match(r".* query [A-Z]$").all()
    first, second = write_traces(traces, tmp_path / "a.parquet"), write_traces(
        generate_traces(7, 300, depth=5, prompt_end="query"), tmp_path / "b.parquet")
    assert first.read_bytes() == second.read_bytes()
    pd.testing.assert_frame_equal(read_traces(first), traces)
    assert generate_traces(7, 0, depth=5).empty
    kept = generate_traces(8, 50, depth=2, exclude=set(traces.prompt))
    assert not set(kept.prompt) & set(traces.prompt)
    with pytest.raises(ValueError, match="traces columns must be exactly"):
        write_traces(traces.drop(columns="answer"), tmp_path / "c.parquet")
    assert not (tmp_path / "c.parquet").exists()
    with pytest.raises(ValueError, match=r"size must be an int >= 0, got -1"):
        generate_traces(7, -1, depth=5)


def test_training_rows_append_the_traces(frames, tmp_path):
    write_splits(frames, tmp_path)
    assert training_files(tmp_path) == [tmp_path / "train.parquet"]
    assert read_training_rows(tmp_path).prompt.tolist() == frames["train"].prompt.tolist()
    traces = generate_traces(7, 40, depth=5)
    write_traces(traces, tmp_path / "traces.parquet")
    rows = read_training_rows(tmp_path)
    assert training_files(tmp_path)[-1] == tmp_path / "traces.parquet"
    assert rows.columns.tolist() == ["prompt", "answer", "query_chain", "depth"]
    assert rows.depth.tolist() == [3] * len(frames["train"]) + [5] * 40
    assert rows.answer.tolist() == frames["train"].answer.tolist() + traces.answer.tolist()
