"""The synthetic benchmark: determinism, exact provenance, held-out templates."""

from __future__ import annotations

import json

import pytest

from tracer.benchmark import PRESETS, SynthConfig, generate, write_benchmark
from tracer.benchmark.kb import RELATIONS
from tracer.benchmark.synth import render


def test_deterministic_for_a_seed(tiny_bench):
    again = generate(PRESETS["tiny"])
    assert again.documents == tiny_bench.documents and again.queries == tiny_bench.queries
    other = generate(SynthConfig(**{**PRESETS["tiny"].__dict__, "seed": 1}))
    assert other.documents != tiny_bench.documents


def test_shape_of_the_benchmark(tiny_bench):
    assert len(RELATIONS) >= 8 and all(len(r.templates) >= 4 for r in RELATIONS)
    assert all(1 <= len(d.facts) <= 3 for d in tiny_bench.documents if d.facts)
    assert any(not d.facts for d in tiny_bench.documents)  # distractor documents exist
    people = tiny_bench.entities["person"]
    assert all(len(p.split()) >= 2 for p in people)  # multi-token names


def test_provenance_is_exact(tiny_bench):
    """Each proponent states the fact; no other document states it (under any template)."""
    by_rel = {r.name: r for r in RELATIONS}
    for f, q in zip(tiny_bench.facts, tiny_bench.queries):
        rel = by_rel[f.relation]
        renderings = [render(rel, t, f.subject, f.object) for t in range(len(rel.templates))]
        stating = {d.doc_id for d in tiny_bench.documents if any(r in d.text for r in renderings)}
        assert stating == set(q.proponents), f.fact_id
        assert len(q.proponents) == PRESETS["tiny"].n_proponents
        assert all(f.fact_id in d.facts for d in tiny_bench.documents if d.doc_id in stating)


def test_query_templates_are_held_out_but_used_elsewhere(tiny_bench):
    by_rel = {r.name: r for r in RELATIONS}
    docs = {d.doc_id: d for d in tiny_bench.documents}
    for f, q in zip(tiny_bench.facts, tiny_bench.queries):
        rel = by_rel[f.relation]
        held = render(rel, f.query_template, f.subject, f.object)
        assert q.prompt + q.target + "." == held
        assert not any(held in docs[p].text for p in q.proponents)
        # the "training-template" prompt is phrased as one of the proponents phrases the fact
        assert any(tiny_bench.train_prompts[q.query_id] + q.target in docs[p].text for p in q.proponents)
        # the corpus uses this template for some other fact of the relation
        prefix = rel.templates[f.query_template].split("{s}")[0]
        suffix = rel.templates[f.query_template].split("{s}")[1].split("{o}")[0]
        assert any(g.query_template != f.query_template for g in tiny_bench.facts if g.relation == f.relation)
        assert any(prefix in d.text and suffix in d.text for d in tiny_bench.documents)


def test_write_benchmark_files(tiny_bench, tmp_path):
    out = write_benchmark(tiny_bench, tmp_path / "b")
    assert {p.name for p in out.iterdir()} == {"corpus.jsonl", "queries.jsonl", "kb.json", "meta.json"}
    q = json.loads((out / "queries.jsonl").read_text().splitlines()[0])
    assert set(q) >= {"id", "prompt", "target", "fact_id", "relation", "subject", "proponents", "train_prompt"}
    assert json.loads((out / "meta.json").read_text())["n_documents"] == len(tiny_bench.documents)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="n_persons"):
        SynthConfig(n_persons=0)


def test_hard_distractors_co_mention_the_true_object_and_word_proponents_unlike_the_query():
    from tracer.benchmark.synth import COMENTIONS, _words

    cfg = PRESETS["tiny"]
    std, hard = generate(cfg), generate(SynthConfig(**{**cfg.__dict__, "distractors": "hard"}))
    by_rel = {r.name: r for r in RELATIONS}
    assert len(hard.documents) == len(std.documents) + len(hard.facts)
    comentions = {COMENTIONS[f.relation].format(s=f.subject, o=f.object) for f in hard.facts}
    # one co-mention per fact: subject and the TRUE object in one sentence, stating no fact
    assert comentions <= {d.text for d in hard.documents if not d.facts}
    assert [q.prompt for q in hard.queries] == [q.prompt for q in std.queries]  # same facts, same queries

    def shared_words(bench):  # words the proponents' templates share with their query's template, in all
        docs = {d.doc_id: d.text for d in bench.documents}
        total = 0
        for q, f in zip(bench.queries, bench.facts):
            rel = by_rel[f.relation]
            qw = _words(rel.templates[f.query_template])
            for p in q.proponents:
                t = next(i for i in range(len(rel.templates)) if render(rel, i, f.subject, f.object) in docs[p])
                total += len(_words(rel.templates[t]) & qw)
        return total

    assert shared_words(hard) < shared_words(std)
    with pytest.raises(ValueError, match="distractors"):
        SynthConfig(distractors="medium")
