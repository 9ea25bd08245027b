"""The position-bias datasets (kv, mdqa, mcq, judge): schemas, shipped copies, sweeps. No model."""

import json
import re
from collections import Counter

import pytest

from posbench.data import (
    POSITION_BIAS_DATASETS, JudgeDataset, KVDataset, MCQDataset, MDQADataset, SegmentedPrompt,
)
from posbench.data.__main__ import main as regenerate
from posbench.data.mdqa import KINDS
from posbench.data.sweeps import keep_with_gold, mentions, resolve_slots, spaced_slots
from posbench.errors import BadOptionError, EmptyDataError, MalformedDataError

ALL = list(POSITION_BIAS_DATASETS.values())
SMALL = {"kv": {"n_rows": 3, "n_pairs": 6}, "mdqa": {"n_questions": 4, "n_documents": 5},
         "mcq": {"n_questions": 12}, "judge": {"n_items": 12}}


@pytest.fixture(scope="module")
def builtin():
    return {name: cls.builtin() for name, cls in POSITION_BIAS_DATASETS.items()}


def _write(tmp_path, rows, name="user.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- shipped copies, generators
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_shipped_copy_is_generate_seed_0(cls, builtin):
    assert builtin[cls.name].source == f"builtin:{cls.builtin_file}"
    assert builtin[cls.name].rows == cls.generate(seed=0).rows


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_generate_is_deterministic_per_seed(cls):
    sizes = SMALL[cls.name]
    assert cls.generate(seed=3, **sizes).rows == cls.generate(seed=3, **sizes).rows
    assert cls.generate(seed=3, **sizes).rows != cls.generate(seed=4, **sizes).rows


def test_shipped_sizes(builtin):
    kv, mdqa, mcq, judge = (builtin[n] for n in ("kv", "mdqa", "mcq", "judge"))
    assert len(kv) == 50 and {len(r["pairs"]) for r in kv} == {40}
    assert len(mdqa) == 60 and {len(r["documents"]) for r in mdqa} == {20}
    assert len(mcq) >= 200 and {len(r["options"]) for r in mcq} == {4}
    assert len(judge) >= 120
    topics = Counter(r["topic"] for r in mcq)
    assert len(topics) == 6 and len(set(topics.values())) == 1
    assert set(Counter(r["answer"] for r in mcq).values()) == {len(mcq) // 4}  # answer slot balanced
    assert set(Counter(r["category"] for r in judge)) == {"wrong", "evasive", "off-topic", "unhelpful"}
    assert abs(sum(r["better"] for r in judge) - len(judge) / 2) <= 0.5
    assert {(r["kind"], r["attribute"]) for r in mdqa} == {(k.name, a.name) for k in KINDS for a in k.attributes}


def test_kv_keys_and_values_are_uuid_like(builtin):
    uuid = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    assert all(uuid.match(s) for row in builtin["kv"] for pair in row["pairs"] for s in pair)


def test_mdqa_gold_passage_holds_the_answer_and_no_distractor_does(builtin):
    for row in builtin["mdqa"]:
        docs, gold = row["documents"], row["gold"]
        answer = docs[gold]["value"]
        assert mentions(docs[gold]["text"], answer) == 1, row["id"]
        assert not any(mentions(d["text"], answer) for i, d in enumerate(docs) if i != gold), row["id"]
        # stricter, for generated rows: every value only in its own document, once
        assert all(mentions(d["text"], v["value"]) == (i == j) for i, d in enumerate(docs) for j, v in enumerate(docs))
        assert mentions(row["question"], docs[gold]["title"])  # the question names the gold entity
        assert not any(mentions(row["question"], d["title"]) for i, d in enumerate(docs) if i != gold)


def test_mdqa_passages_read_naturally(builtin):
    texts = [d["text"] for row in builtin["mdqa"] for d in row["documents"]]
    assert all(50 <= len(t.split()) <= 90 for t in texts)
    assert not [t for t in texts if re.search(r"\ba [aeiou]", t)]  # "a owl"
    assert not [t for t in texts if "{" in t or "}" in t]  # every template slot filled
    titles = [d["title"] for row in builtin["mdqa"] for d in row["documents"]]
    assert len(set(titles)) == len(titles)  # one invented entity, one set of facts


def test_regeneration_entry_writes_what_generate_gives(tmp_path, capsys):
    out = tmp_path / "kv.jsonl"
    assert regenerate(["kv", "--seed", "2", "--n-rows", "2", "--n-pairs", "3", "--out", str(out)]) == 0
    assert KVDataset.from_jsonl(out).rows == KVDataset.generate(2, n_rows=2, n_pairs=3).rows
    regenerate(["mcq", "--n-questions", "2"])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == MCQDataset.generate(0, 2).rows


# ---------------------------------------------------------------------------- user files, validation
USER_ROWS = {
    "kv": [{"id": "a", "pairs": [["k1", "v1"], ["k2", "v2"]], "gold": 0}],
    "mdqa": [{"id": "a", "question": "What colour is the Brint hare?", "gold": 1, "documents": [
        {"title": "Olk hare", "text": "The Olk hare is grey.", "value": "grey"},
        {"title": "Brint hare", "text": "The Brint hare is white.", "value": "white"}]}],
    "mcq": [{"id": "a", "topic": "t", "question": "2 + 2?", "options": ["3", "4", "5"], "answer": 1}],
    "judge": [{"id": "a", "category": "wrong", "question": "2 + 2?", "answers": ["4.", "5."], "better": 0}],
}


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_a_users_file_in_the_same_schema_loads_and_sweeps(cls, tmp_path):
    rows = USER_ROWS[cls.name] + [dict(USER_ROWS[cls.name][0], id="b")]
    ds = cls.from_jsonl(_write(tmp_path, [rows[0], "", rows[1]]))  # blank lines are skipped
    assert ds.rows == rows and ds.source.endswith("user.jsonl")
    items = ds.scored_items()
    assert items and len({it.item_id for it in items}) == len(items)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_round_trip_through_jsonl(cls, tmp_path):
    ds = cls.generate(seed=1, **SMALL[cls.name])
    assert cls.from_jsonl(ds.to_jsonl(tmp_path / "x.jsonl")).rows == ds.rows


def _with(cls_name, **change):
    return {**USER_ROWS[cls_name][0], **change}


def _mdqa_docs(*texts_values):
    return [{"title": f"T{i}", "text": t, "value": v} for i, (t, v) in enumerate(texts_values)]


BAD_ROWS = [
    ("kv", _with("kv", gold=2), '"gold" is 2 but there are 2 pairs: use 0..1'),
    ("kv", _with("kv", gold="0"), '"gold" must be an integer, got a string'),
    ("kv", _with("kv", pairs=[["k1", "v1"], ["k1", "v2"]]), 'repeats the key "k1" (pairs 0 and 1)'),
    ("kv", _with("kv", pairs=[["k1", "v1"], ["k2", "v1"]]), 'repeats the value "v1"'),
    ("kv", _with("kv", pairs=[["k1", "v1"], ["v1", "v2"]]), 'both as a key and as a value'),
    ("kv", _with("kv", pairs=[["k1", "v1"], ["k2", "v2", "x"]]), '"pairs" [1] must be a [key, value] pair'),
    ("kv", _with("kv", pairs=[["k1", "v1"], ["k\"2", "v2"]]), "holds a quote"),
    ("kv", _with("kv", pairs=[["k1", "v1"]]), "needs at least 2 pairs"),
    ("kv", {"id": "a", "gold": 0}, 'missing field "pairs"'),
    ("mdqa", _with("mdqa", gold=1, documents=_mdqa_docs(("It is 1743 or 1801.", "1743"), ("In 1801.", "1801"))),
     '"documents"[0] ("T0") also mentions the answer "1801"'),
    ("mdqa", _with("mdqa", documents=_mdqa_docs(("Grey.", "grey"), ("Pale.", "white"))),
     '[1] ("T1") does not state its value "white"'),
    ("mdqa", _with("mdqa", documents=_mdqa_docs(("Grey.", "grey"), ("Also grey.", "Grey"))),
     'give the same value "Grey"'),
    ("mdqa", _with("mdqa", question="Is it white?"), '"question" gives away the answer "white"'),
    ("mdqa", _with("mdqa", documents=[{"title": "T", "text": "grey"}, {"title": "U", "text": "white", "value": "white"}]),
     '[0] needs a "value" string'),
    ("mdqa", _with("mdqa", documents=_mdqa_docs(("Grey\nhare.", "grey"), ("White.", "white"))),
     '[0]["text"] holds a line break'),
    ("mdqa", _with("mdqa", documents=["a", "b"]), '"documents"[0] must be an object'),
    ("mcq", _with("mcq", answer=3), '"answer" is 3 but there are 3 options'),
    ("mcq", _with("mcq", options=["4", "4 ", "5"]), '[0] and [1] are the same option'),
    ("mcq", _with("mcq", options=["4"]), "has 1 options: give 2 to 8"),
    ("mcq", _with("mcq", options=["3", "4\n", "5"]), "[1] holds a line break"),
    ("mcq", _with("mcq", topic=""), '"topic" is empty'),
    ("judge", _with("judge", answers=["4.", "5.", "6."]), "has 3 answers: give exactly 2"),
    ("judge", _with("judge", answers=["4.", "4."]), "holds the same answer twice"),
    ("judge", _with("judge", better=-1), '"better" is -1 but there are 2 answers'),
]


@pytest.mark.parametrize("name, row, reason", BAD_ROWS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_ROWS)])
def test_a_malformed_row_is_rejected_with_file_line_and_reason(name, row, reason, tmp_path):
    cls = POSITION_BIAS_DATASETS[name]
    path = _write(tmp_path, [USER_ROWS[name][0], row])
    with pytest.raises(MalformedDataError) as err:
        cls.from_jsonl(path)
    message = str(err.value)
    assert message.startswith(f"{path}:2: ")
    assert reason in message
    assert cls.example in message  # the fix: a valid line to copy


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_each_example_line_is_valid(cls):
    assert cls.row_problem(json.loads(cls.example)) is None


def test_invalid_json_binary_latin1_empty_and_duplicate_ids_are_rejected(tmp_path):
    path = _write(tmp_path, [USER_ROWS["kv"][0], '{"id": "b", "pairs": ['])
    with pytest.raises(MalformedDataError, match=re.escape(f"{path}:2: not valid JSON")):
        KVDataset.from_jsonl(path)
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\x00\x01\x02PK\x03\x04")
    with pytest.raises(MalformedDataError, match="looks binary"):
        MCQDataset.from_jsonl(binary)
    latin1 = tmp_path / "l.jsonl"
    latin1.write_bytes((json.dumps(USER_ROWS["mcq"][0]) + "\n" +
                        json.dumps(_with("mcq", id="b", question="Caf\u00e9?"), ensure_ascii=False) + "\n").encode("latin-1"))
    with pytest.raises(MalformedDataError, match=re.escape(f"{latin1}:2: not UTF-8")):
        MCQDataset.from_jsonl(latin1)
    with pytest.raises(EmptyDataError):
        JudgeDataset.from_jsonl(_write(tmp_path, ["", "  "], "empty.jsonl"))
    with pytest.raises(MalformedDataError, match='id "a" is used by rows 1 and 2'):
        JudgeDataset.from_jsonl(_write(tmp_path, USER_ROWS["judge"] * 2, "dup.jsonl"))


# ---------------------------------------------------------------------------- sweep arguments
def test_slot_choices():
    assert spaced_slots(40, 5) == [0, 10, 20, 29, 39]
    assert spaced_slots(20, 2) == [0, 19] and spaced_slots(5, 9) == [0, 1, 2, 3, 4] and spaced_slots(7, 1) == [0]
    assert resolve_slots(4, None) == [0, 1, 2, 3] and resolve_slots(4, [3, -1, 0]) == [3, 0]
    with pytest.raises(BadOptionError, match="slot 4 is outside the 4 segments"):
        resolve_slots(4, [4])
    assert keep_with_gold(10, 2, 4) == [0, 1, 2, 3]
    assert keep_with_gold(10, 7, 4) == [0, 1, 2, 7]
    with pytest.raises(BadOptionError, match="n_segments=11: this row has 10 segments"):
        keep_with_gold(10, 0, 11)
    with pytest.raises(BadOptionError, match="shift 4 is outside 0..3"):
        MCQDataset.row_items(USER_ROWS["mcq"][0] | {"options": list("abcd")}, shifts=[4])


# ---------------------------------------------------------------------------- gold slot sweep (kv, mdqa)
@pytest.mark.parametrize("name", ["kv", "mdqa"])
@pytest.mark.parametrize("n", [None, 10, 3])
def test_moving_gold_to_slot_s_puts_it_in_segment_s(name, n, builtin):
    cls = POSITION_BIAS_DATASETS[name]
    for row in builtin[name].rows[:6]:
        items = cls.row_items(row, n_segments=n)
        size = n or len(row["pairs" if name == "kv" else "documents"])
        assert [it.gold_segment for it in items] == list(range(size))
        gold_text = items[0].prompt.segments[0]
        for it in items:
            s = it.gold_segment
            assert it.prompt.segments[s] == gold_text and it.prompt.n_segments == size
            assert sorted(it.prompt.segments) == sorted(items[0].prompt.segments)  # same set, new order
            others = [seg for i, seg in enumerate(it.prompt.segments) if i != s]
            assert others == [seg for i, seg in enumerate(items[0].prompt.segments) if i != 0]  # relative order kept
            assert it.choices == items[0].choices and it.gold == items[0].gold  # choices do not move
            assert it.choices[it.gold].strip().strip('"') == it.meta["gold_value"]
            assert len(set(it.choices)) == size
            assert it.meta["gold_slot"] == s and it.meta["n_segments"] == size and it.meta["row_id"] == row["id"]
            assert all(seg.endswith("\n") and seg.count("\n") == 1 for seg in it.prompt.segments)
            assert it.meta["gold_value"] in gold_text
            assert not any(it.meta["gold_value"] in seg for i, seg in enumerate(it.prompt.segments) if i != s)


def test_gold_slot_sweep_with_spaced_slots(builtin):
    items = KVDataset.row_items(builtin["kv"][0], n_segments=20, slots=3)
    assert [it.gold_segment for it in items] == [0, 10, 19]
    assert [it.meta["depth"] for it in items] == [0.0, 10 / 19, 1.0]
    assert len({it.item_id for it in KVDataset.builtin().scored_items(n_segments=10, slots=2)}) == 100


def test_kv_prompt_text_by_hand():
    row = {"id": "t", "pairs": [["k1", "v1"], ["k2", "v2"], ["k3", "v3"]], "gold": 2}
    item = KVDataset.row_items(row, slots=[0])[0]
    assert item.prompt.text == (
        "The JSON object below maps keys to values. Find the key given after it and reply with the value "
        "stored under that key.\n\nJSON object:\n{\n"
        '  "k3": "v3",\n'
        '  "k1": "v1",\n'
        '  "k2": "v2",\n'
        '}\n\nKey: "k3"\nCorresponding value:'
    )
    assert item.prompt.segments == ('  "k3": "v3",\n', '  "k1": "v1",\n', '  "k2": "v2",\n')
    assert item.choices == (' "v1"', ' "v2"', ' "v3"') and item.gold == 2 and item.gold_segment == 0
    assert item.item_id == "t:n3:slot0" and item.meta["key"] == "k3" and item.meta["gold_value"] == "v3"
    assert [it.prompt.segments for it in KVDataset.row_items(row, n_segments=2)] == [
        ('  "k3": "v3",\n', '  "k1": "v1",\n'), ('  "k1": "v1",\n', '  "k3": "v3",\n')]


def test_mdqa_prompt_text_by_hand():
    row = USER_ROWS["mdqa"][0]
    item = MDQADataset.row_items(row, slots=[0])[0]
    assert item.prompt.text == (
        "Answer the question using only the documents below. Most of them are about something else.\n\n"
        "Document (Title: Brint hare) The Brint hare is white.\n"
        "Document (Title: Olk hare) The Olk hare is grey.\n"
        "\nQuestion: What colour is the Brint hare?\nAnswer:"
    )
    assert item.choices == (" grey", " white") and item.gold == 1 and item.gold_segment == 0


# ---------------------------------------------------------------------------- cyclic shifts (mcq, judge)
def test_cyclic_shifts_cover_every_slot_once_per_question(builtin):
    for row in builtin["mcq"]:
        items = MCQDataset.row_items(row)
        assert [it.meta["shift"] for it in items] == [0, 1, 2, 3]
        assert sorted(it.gold for it in items) == [0, 1, 2, 3]  # the correct option visits every slot once
        for slot in range(4):  # and so does every other option: a Latin square
            assert sorted(it.meta["order"][slot] for it in items) == [0, 1, 2, 3]
        for it in items:
            assert it.choices == (" A", " B", " C", " D") and it.gold == it.gold_segment == it.meta["gold_slot"]
            assert it.meta["order"] == tuple((i + it.meta["shift"]) % 4 for i in range(4))
            assert [seg[:3] for seg in it.prompt.segments] == ["A. ", "B. ", "C. ", "D. "]  # labels by slot
            assert it.prompt.segments[it.gold] == f"{'ABCD'[it.gold]}. {row['options'][row['answer']]}\n"
            assert it.meta["gold_content"] == row["answer"] and it.meta["gold_label"] == "ABCD"[it.gold]
            assert it.meta["topic"] == row["topic"]


def test_mcq_prompt_text_by_hand():
    row = {"id": "q", "topic": "geography", "question": "What is the capital of Italy?",
           "options": ["Milan", "Rome", "Venice", "Naples"], "answer": 1}
    shift1 = MCQDataset.row_items(row, shifts=[1])[0]
    assert shift1.prompt.text == (
        "The following is a multiple-choice question. Reply with the letter of the correct option.\n\n"
        "Question: What is the capital of Italy?\n"
        "A. Rome\nB. Venice\nC. Naples\nD. Milan\n"
        "Answer:"
    )
    assert shift1.gold == 0 and shift1.item_id == "q:shift1" and shift1.meta["order"] == (1, 2, 3, 0)
    assert [it.gold for it in MCQDataset.row_items(row)] == [1, 0, 3, 2]


def test_a_later_permutation_moves_labels_with_their_content():
    """PINE-style re-ordering keeps the gold label pointing at the correct content."""
    row = {"id": "q", "topic": "t", "question": "Q?", "options": ["w", "x", "y", "z"], "answer": 2}
    item = MCQDataset.row_items(row, shifts=[0])[0]
    moved = item.prompt.permuted([3, 1, 0, 2])
    assert isinstance(moved, SegmentedPrompt)
    label = item.choices[item.gold].strip()
    assert [seg for seg in moved.segments if seg.startswith(f"{label}. ")] == ["C. y\n"]


def test_judge_items_come_in_both_orders(builtin):
    for row in builtin["judge"]:
        first, second = JudgeDataset.row_items(row)
        better = row["answers"][row["better"]]
        assert (first.gold, second.gold) == (row["better"], 1 - row["better"])
        for it in (first, second):
            assert it.choices == (" A", " B") and it.gold_segment == it.gold
            assert it.prompt.segments[it.gold] == f"Response {'AB'[it.gold]}:\n{better}\n\n"
            assert it.meta["gold_content"] == row["better"] and it.meta["category"] == row["category"]
        assert first.prompt.segments[0][len("Response A:"):] == second.prompt.segments[1][len("Response B:"):]


def test_judge_prompt_text_by_hand():
    item = JudgeDataset.row_items(USER_ROWS["judge"][0], shifts=[1])[0]
    assert item.prompt.text == (
        "Below are a question and two responses to it. Decide which response is better. A better response "
        "answers the question correctly, stays on topic and is helpful.\n\n"
        "Question: 2 + 2?\n\n"
        "Response A:\n5.\n\n"
        "Response B:\n4.\n\n"
        "Which response is better, A or B?\nBetter response:"
    )
    assert item.gold == 1 and item.meta["order"] == (1, 0) and item.meta["gold_label"] == "B"


def test_readme_prompt_examples_are_what_the_code_builds(builtin):
    from posbench.data import data_dir

    readme = (data_dir() / "README.md").read_text(encoding="utf-8")
    examples = [KVDataset.row_items(builtin["kv"][0], n_segments=3, slots=[1])[0],
                MDQADataset.row_items(builtin["mdqa"][3], n_segments=2, slots=[1])[0],
                MCQDataset.row_items({"id": "q", "topic": "t", "question": "What is the capital of Italy?",
                                      "options": ["Milan", "Rome", "Venice", "Naples"], "answer": 1}, shifts=[1])[0],
                JudgeDataset.row_items(USER_ROWS["judge"][0], shifts=[1])[0]]
    for item in examples:
        assert f"```\n{item.prompt.text}\n```" in readme, item.item_id
