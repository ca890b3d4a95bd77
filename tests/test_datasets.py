"""Fact dataset loaders (edit files, CounterFact, zsRE) and the countryinfo fact set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nmkevc.datasets import (
    build_countryinfo,
    count_by_relation,
    load_counterfact,
    load_counterfact_records,
    load_zsre,
    read_edit_file,
    write_dataset,
)
from nmkevc.datasets.countryinfo_set import RELATION_NAMES, RELATIONS, country_facts, split_of
from nmkevc.errors import EditRequestError, NmkevcError

CF_RECORD = {
    "case_id": 0,
    "pararel_idx": 2796,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux",
    },
    "paraphrase_prompts": [
        "Shayna does this and Danielle Darrieux speaks the language of",
        "An album was released. Danielle Darrieux, a native",
    ],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is", "Montesquieu spoke the language"],
    "attribute_prompts": ["J. R. R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}

ZSRE_RECORD = {
    "subject": "Watts Humphrey",
    "src": "What university did Watts Humphrey attend?",
    "pred": "Trinity College",
    "rephrase": "What university did Watts Humphrey take part in?",
    "alt": "University of Michigan",
    "answers": ["Illinois Institute of Technology"],
    "loc": "nq question: who played desmond doss father in hacksaw ridge",
    "loc_ans": "Hugo Weaving",
}


def _write(path, records, jsonl=False):
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records), encoding="utf-8")
    return path


# -- CounterFact -------------------------------------------------------------------


def test_counterfact_json_and_jsonl(tmp_path):
    second = json.loads(json.dumps(CF_RECORD))
    second["case_id"] = 7
    second["requested_rewrite"]["subject"] = "Edwin of Northumbria"
    second["requested_rewrite"]["prompt"] = "The official religion of {} is"
    for jsonl in (False, True):
        path = _write(tmp_path / f"cf{int(jsonl)}.json", [CF_RECORD, second], jsonl)
        reqs = load_counterfact(path)
        assert len(reqs) == 2
        r = reqs[0]
        assert (r.subject, r.prompt, r.target_new, r.target_true, r.case_id) == (
            "Danielle Darrieux",
            "The mother tongue of {} is",
            "English",
            "French",
            "0",
        )
        assert r.paraphrases == tuple(CF_RECORD["paraphrase_prompts"])
        assert r.neighborhood == tuple(CF_RECORD["neighborhood_prompts"])
        assert reqs[1].case_id == "7" and reqs[1].subject == "Edwin of Northumbria"


def test_counterfact_records_keep_evaluation_prompts(tmp_path):
    [rec] = load_counterfact_records(_write(tmp_path / "cf.json", [CF_RECORD]))
    assert rec.attribute_prompts == ("J. R. R. Tolkien is a native speaker of",)
    assert rec.generation_prompts == ("Danielle Darrieux's mother tongue is",)
    assert rec.relation_id == "P103"
    assert rec.neighborhood_answers is None


def test_counterfact_errors_name_the_record(tmp_path):
    bad = json.loads(json.dumps(CF_RECORD))
    del bad["requested_rewrite"]["subject"]
    path = _write(tmp_path / "cf.json", [CF_RECORD, bad])
    with pytest.raises(EditRequestError, match=r"cf\.json: record index 1: missing field 'subject'"):
        load_counterfact(path)
    path = _write(tmp_path / "cf.jsonl", [CF_RECORD, CF_RECORD, bad], jsonl=True)
    with pytest.raises(EditRequestError, match=r"cf\.jsonl: line 3: missing field 'subject'"):
        load_counterfact(path)
    path = _write(tmp_path / "plain.json", [{"subject": "x", "prompt": "{} is", "target": "y"}])
    with pytest.raises(EditRequestError, match="record index 0: not a CounterFact record"):
        load_counterfact(path)


# -- zsRE --------------------------------------------------------------------------


def test_zsre_loader(tmp_path):
    no_alt = {k: v for k, v in ZSRE_RECORD.items() if k != "alt"}
    odd = dict(ZSRE_RECORD, subject="watts humphrey")
    absent = dict(ZSRE_RECORD, subject="Carnegie Mellon")
    recs = load_zsre(_write(tmp_path / "z.json", [ZSRE_RECORD, no_alt, odd, absent]))
    r = recs[0].request
    assert r.prompt == "What university did {} attend?"
    assert r.target_new == "University of Michigan"
    assert r.target_true == "Illinois Institute of Technology"
    assert r.paraphrases == ("What university did Watts Humphrey take part in?",)
    assert r.case_id == "0"
    assert recs[0].loc == ZSRE_RECORD["loc"] and recs[0].loc_ans == "Hugo Weaving"
    assert recs[1].request.target_new == "Illinois Institute of Technology"
    assert recs[1].request.target_true is None
    assert recs[2].request.prompt == "What university did {} attend?"
    assert recs[2].request.text == "What university did watts humphrey attend?"
    assert recs[3].request.prompt == "{}: What university did Watts Humphrey attend?"


def test_zsre_errors(tmp_path):
    bad = {k: v for k, v in ZSRE_RECORD.items() if k not in ("alt", "answers")}
    path = _write(tmp_path / "z.jsonl", [ZSRE_RECORD, bad], jsonl=True)
    with pytest.raises(EditRequestError, match=r"line 2: missing field 'alt' \(or 'answers'\)"):
        load_zsre(path)
    bad = {k: v for k, v in ZSRE_RECORD.items() if k != "loc_ans"}
    with pytest.raises(EditRequestError, match="record index 0: missing field 'loc_ans'"):
        load_zsre(_write(tmp_path / "z.json", [bad]))


# -- edit files --------------------------------------------------------------------


def test_edit_file_forms(tmp_path):
    simple = {"subject": "Eiffel Tower", "prompt": "The {} is in", "target": "Rome"}
    named = {
        "subject": "Eiffel Tower",
        "prompt": "The Eiffel Tower is located in the city of",
        "target_new": " Rome ",
        "target_true": "Paris",
        "paraphrases": ["Where is the {}? In", "People visit the Eiffel Tower in"],
        "neighborhood": ["The Louvre is in"],
        "case_id": 3,
    }
    path = _write(tmp_path / "e.jsonl", [simple, named, CF_RECORD], jsonl=True)
    a, b, c = read_edit_file(path)
    assert (a.subject, a.prompt, a.target_new, a.target_true) == (
        "Eiffel Tower",
        "The {} is in",
        "Rome",
        None,
    )
    assert b.prompt == "The {} is located in the city of"
    assert b.target_new == "Rome" and b.target_true == "Paris" and b.case_id == "3"
    assert b.paraphrases == ("Where is the Eiffel Tower? In", "People visit the Eiffel Tower in")
    assert b.neighborhood == ("The Louvre is in",)
    assert c.subject == "Danielle Darrieux" and c.target_true == "French"
    # one object in a .json file
    one = tmp_path / "one.json"
    one.write_text(json.dumps(simple))
    assert read_edit_file(one) == [a]
    # several objects in a .json file: read as JSONL
    many = tmp_path / "many.json"
    many.write_text(json.dumps(simple) + "\n" + json.dumps(named) + "\n")
    assert read_edit_file(many) == [a, b]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"subject": "A", "prompt": "{} is", "target": "x"}', "{not json"], "line 2: invalid JSON"),
        (['{"subject": "A", "prompt": "{} is"}'], "line 1: missing field 'target'"),
        (['{"subject": "Paris", "prompt": "Rome is in", "target": "x"}'], "line 1: prompt"),
        (['{"subject": "A", "prompt": "{} is", "target": "  "}'], "line 1: target is empty"),
        (["", '{"subject": "", "prompt": "{} is", "target": "x"}'], "line 2: subject is empty"),
        (['{"subject": "A", "prompt": "{} is", "target": "x", "paraphrase": []}'], "unknown field"),
        (['{"subject": "A", "prompt": "{} {} is", "target": "x"}'], "exactly once"),
        (['{"subject": "A", "prompt": "{} is {x}", "target": "x"}'], "stray brace"),
        (['["a list"]'], "line 1: expected a JSON object"),
        (['{"subject": 3, "prompt": "{} is", "target": "x"}'], "'subject' must be a string"),
    ],
)
def test_edit_file_errors_jsonl(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EditRequestError, match=message) as info:
        read_edit_file(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_edit_file_errors_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"subject": "A", "prompt": "{} is", "target": "x"},\n {"subject": }\n]')
    with pytest.raises(EditRequestError, match=r"bad\.json: line 3: invalid JSON"):
        read_edit_file(path)
    _write(path, [{"subject": "A", "prompt": "{} is", "target": "x"}, {"subject": "B"}])
    with pytest.raises(EditRequestError, match=r"bad\.json: record index 1: missing field 'prompt'"):
        read_edit_file(path)
    path.write_text('"just a string"')
    with pytest.raises(EditRequestError, match="expected a JSON list"):
        read_edit_file(path)
    path.write_text("[]")
    with pytest.raises(EditRequestError, match="no records"):
        read_edit_file(path)
    path.write_text("")
    with pytest.raises(EditRequestError, match="empty"):
        read_edit_file(path)
    with pytest.raises(EditRequestError, match="no such file"):
        read_edit_file(tmp_path / "missing.json")


# -- countryinfo -------------------------------------------------------------------


@pytest.fixture(scope="module")
def country_records():
    pytest.importorskip("countryinfo", reason="the countryinfo package is not installed")
    return build_countryinfo(seed=0)


def test_countryinfo_templates():
    for rel in RELATIONS:
        assert len(rel.templates) == 4
        assert all(t.count("{}") == 1 for t in rel.templates)


def test_countryinfo_schema(country_records, tmp_path):
    counts = count_by_relation(country_records)
    assert set(counts) == set(RELATION_NAMES)
    assert all(n >= 150 for n in counts.values()), counts
    assert sum(counts.values()) >= 2000  # the lifelong benchmark's scale
    first = sum(r["requested_rewrite"]["prompt"].startswith("{}") for r in country_records)
    assert first >= 1000  # many prompts put the subject first, as real fact sets do
    assert [r["case_id"] for r in country_records] == list(range(len(country_records)))
    for rec in country_records:
        rw = rec["requested_rewrite"]
        subject, new, true = rw["subject"], rw["target_new"]["str"], rw["target_true"]["str"]
        assert rw["prompt"].count("{}") == 1
        assert new and true and new != true
        assert len(rec["paraphrase_prompts"]) == 3
        assert all(subject in p and "{}" not in p for p in rec["paraphrase_prompts"])
        neighbours = rec["neighborhood_subjects"]
        assert 1 <= len(neighbours) <= 10 and len(set(neighbours)) == len(neighbours)
        assert subject not in neighbours
        assert len(rec["neighborhood_prompts"]) == len(neighbours)
        assert len(rec["neighborhood_answers"]) == len(neighbours)
        assert new not in rec["neighborhood_answers"]
        for s, p in zip(neighbours, rec["neighborhood_prompts"], strict=True):
            assert s in p and "{}" not in p
    # The loader reads what the generator writes.
    path = write_dataset(country_records, tmp_path / "countries.jsonl")
    loaded = load_counterfact_records(path)
    assert len(loaded) == len(country_records)
    assert loaded[0].neighborhood_answers == tuple(country_records[0]["neighborhood_answers"])
    assert loaded[0].neighborhood_subjects == tuple(country_records[0]["neighborhood_subjects"])


def test_countryinfo_prefers_neighbours_sharing_the_true_answer(country_records):
    facts = country_facts()
    euro = [r for r in country_records if r["requested_rewrite"]["target_true"]["str"] == "euro"]
    assert euro
    for rec in euro:
        assert rec["neighborhood_answers"] == ["euro"] * 10
    paris = next(
        r
        for r in country_records
        if r["requested_rewrite"]["subject"] == "France" and r["requested_rewrite"]["relation_id"] == "P36"
    )
    assert paris["requested_rewrite"]["target_true"]["str"] == "Paris"
    assert facts["capital"]["France"] == "Paris"
    assert "Paris" not in paris["neighborhood_answers"]


def test_countryinfo_is_reproducible(country_records, tmp_path):
    a = write_dataset(country_records, tmp_path / "a.json")
    b = write_dataset(build_countryinfo(seed=0), tmp_path / "b.json")
    assert a.read_bytes() == b.read_bytes()
    other = build_countryinfo(seed=1)
    assert [r["requested_rewrite"]["target_new"] for r in other] != [
        r["requested_rewrite"]["target_new"] for r in country_records
    ]


def test_countryinfo_options():
    pytest.importorskip("countryinfo", reason="the countryinfo package is not installed")
    few = build_countryinfo(seed=0, relations=["currency", "capital"], max_per_relation=5)
    assert count_by_relation(few) == {"capital": 5, "currency": 5}
    assert few == build_countryinfo(seed=0, relations=["capital", "currency"], max_per_relation=5)
    with pytest.raises(NmkevcError, match="unknown relation 'population'"):
        build_countryinfo(relations=["population"])


def test_countryinfo_cleaning_on_given_data():
    def country(name, alpha3, **kw):
        return {"name": name, "ISO": {"alpha3": alpha3}, **kw}

    data = {
        "a": country(
            "Aland", "AAA", capital="Alpha", region="Europe", languages=["fr"], currencies=["CHE", "CHF"]
        ),
        "b": country(
            "Bland",
            "BBB",
            capital="Beta",
            region="Americas",
            intermediateregion="South America",
            languages=["rs"],
            currencies=["EUR"],
        ),
        "c": country("Cland (old)", "CCC", capital="Gamma", region="Asia"),
        "d": country("Dland", "AAA", capital="Delta", region="Asia"),
        "e": country("Eland", "", capital="Epsilon", region="Asia"),
        "f": country("Fland", "FFF", capital="Fland", region="Americas", languages=[]),
    }
    facts = country_facts(data)
    assert facts["capital"] == {"Aland": "Alpha", "Bland": "Beta"}
    assert facts["continent"] == {"Aland": "Europe", "Bland": "South America", "Fland": "North America"}
    assert facts["language"] == {"Aland": "French"}
    assert facts["currency"] == {"Aland": "Swiss franc", "Bland": "euro"}
    recs = build_countryinfo(countries=data)
    # Language has a single value, so no counterfactual exists and it is left out.
    assert count_by_relation(recs) == {"capital": 2, "continent": 3, "currency": 2}


def test_countryinfo_split_is_fixed_by_subject(country_records):
    dev = [r for r in country_records if r["split"] == "dev"]
    test = [r for r in country_records if r["split"] == "test"]
    assert len(dev) + len(test) == len(country_records)
    assert 0.1 < len(dev) / len(country_records) < 0.3
    # The split does not move with the seed: a subject is dev or test whatever the draw.
    other = {(r["requested_rewrite"]["relation_id"], r["requested_rewrite"]["subject"]): r["split"]
             for r in build_countryinfo(seed=3)}
    for r in country_records:
        key = (r["requested_rewrite"]["relation_id"], r["requested_rewrite"]["subject"])
        if key in other:
            assert other[key] == r["split"]
    only_dev = build_countryinfo(seed=0, split="dev")
    assert [r["case_id"] for r in only_dev] == [r["case_id"] for r in dev]
    with pytest.raises(NmkevcError, match="unknown split"):
        build_countryinfo(split="train")


def test_countryinfo_provinces_on_given_data():
    data = {
        "a": {"name": "Aland", "ISO": {"alpha3": "AAA"},
              "provinces": "['North (Nord)', 'Shared', 'Aland East', 'Zone 5', 'South']"},
        "b": {"name": "Bland", "ISO": {"alpha3": "BBB"}, "provinces": ["Shared", "Hill"]},
    }
    facts = country_facts(data)
    # parenthesised names cut; a name under two countries, overlapping its country, or with
    # digits is dropped; a list stored as its repr is parsed as a literal
    assert facts["province"] == {"North": "Aland", "South": "Aland", "Hill": "Bland"}
    assert split_of("province", "North") in ("dev", "test")


def test_docs_quote_the_builders_counts(country_records):
    """docs/evaluation.md states the set's size per relation: it must be what the code builds."""
    import re

    text = (Path(__file__).parent.parent / "docs" / "evaluation.md").read_text("utf-8")
    text = " ".join(text.split())
    m = re.search(r"With seed 0 that is (\d+) records: ([^.]+)\.", text)
    assert m, "docs/evaluation.md lost its fact-set counts"
    stated = {name: int(n) for name, n in re.findall(r"([a-z]+) (\d+)", m.group(2))}
    assert int(m.group(1)) == len(country_records)
    assert stated == count_by_relation(country_records)
    split = re.search(r"\((\d+) dev / (\d+) test with seed 0\)", text)
    assert split and (int(split.group(1)), int(split.group(2))) == (
        sum(r["split"] == "dev" for r in country_records), sum(r["split"] == "test" for r in country_records))


def test_eval_cases_say_each_neighbours_subject_and_the_relation():
    from nmkevc.datasets.countryinfo_set import RELATIONS
    from nmkevc.porcelain.datasets import eval_cases

    cases = eval_cases("countryinfo", 30, seed=0, neighbours=3, split="dev")
    assert len(cases) == 30
    for c in cases:
        assert c.relation in {r.relation_id for r in RELATIONS}
        assert len(c.neighborhood_subjects) == len(c.request.neighborhood) == len(c.neighborhood_answers) <= 3
        for s, p in zip(c.neighborhood_subjects, c.request.neighborhood, strict=True):
            assert s in p and s != c.request.subject
