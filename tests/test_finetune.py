"""``tracer train --init-from``: fine-tuning a local pretrained LM, checkpoints, and the FTRACE learned slice
with the base model as checkpoint 0 (checked against a hand-computed greedy oracle)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tracer.model.loading import load_checkpoints, load_model, load_tokenizer, weights_fingerprint

# Invented facts: the fine-tuning corpus states four; two more are asked but never stated.
STATED = [("Zorblat Quenn lives in", " Harrowmere"), ("The banner of Ostrel is", " vermilion"),
          ("Pilvo Marask plays the", " theorbo"), ("Dunsk Vale exports", " saltpetre")]
UNSTATED = [("Yeltra Boun lives in", " Cassivon"), ("The banner of Quorm is", " ochre")]


@pytest.fixture(scope="module")
def ft_bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ftbench")
    with open(out / "corpus.jsonl", "w") as fh:
        for i, (p, t) in enumerate(STATED):
            fh.write(json.dumps({"id": f"d{i}", "text": p + t + ".", "facts": [f"f{i}"]}) + "\n")
    with open(out / "queries.jsonl", "w") as fh:
        for i, (p, t) in enumerate(STATED + UNSTATED):
            fh.write(json.dumps({"id": f"q{i}", "prompt": p, "target": t, "fact_id": f"f{i}"}) + "\n")
    return out


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory, tiny_run, ft_bench):
    """The tiny run's last checkpoint fine-tuned (via the CLI) until it recites the four sentences."""
    from tracer.cli.main import main

    base = load_checkpoints(tiny_run)[-1].path
    before = weights_fingerprint(base)
    out = tmp_path_factory.mktemp("ft") / "run"
    assert main(["train", "--data", str(ft_bench), "--out", str(out), "--init-from", str(base),
                 "--epochs", "40", "--lr", "1e-2", "--batch-size", "2"]) == 0
    assert weights_fingerprint(base) == before  # the base is read, never written
    return SimpleNamespace(base=base, out=out)


def _greedy_right(model_dir: Path, prompt: str, target: str) -> bool:
    """Oracle: the tokenizer's own template (``tok(prompt)`` puts its BOS first), then one forward pass;
    every target token must be the argmax at the position before it."""
    tok, model = load_tokenizer(model_dir), load_model(model_dir)
    p = tok(prompt)["input_ids"]
    t = tok.encode(target, add_special_tokens=False)
    ids = torch.tensor([p + t])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    return all(int(logits[len(p) + j - 1].argmax()) == t[j] for j in range(len(t)))


def test_learned_slice_uses_the_base_as_checkpoint_0(ft_run) -> None:
    report = json.loads((ft_run.out / "train_report.json").read_text())
    names = [c["name"] for c in report["checkpoints"]]
    assert names[0] == "base" and report["checkpoints"][0]["path"] == str(ft_run.base.resolve())
    assert report["checkpoints"][0]["step"] == 0 and report["init_from"] == str(ft_run.base.resolve())
    last = ft_run.out / names[-1]
    qs = STATED + UNSTATED
    base_ok = [_greedy_right(ft_run.base, p, t) for p, t in qs]
    last_ok = [_greedy_right(last, p, t) for p, t in qs]
    learned = {f"q{i}" for i in range(len(qs)) if last_ok[i] and not base_ok[i]}
    assert learned, "the oracle must see something learned, or this test could not fail"
    assert set(report["learned_query_ids"]) == learned and report["n_learned"] == len(learned)
    assert report["checkpoints"][0]["acc_heldout_template"] == pytest.approx(sum(base_ok) / len(qs))
    assert report["checkpoints"][-1]["acc_heldout_template"] == pytest.approx(sum(last_ok) / len(qs))
    assert not any(last_ok[len(STATED):])  # never stated: not learned


def test_checkpoints_load_like_tracer_train(ft_run, tiny_bench) -> None:
    from safetensors.torch import load_file

    from tracer.model.tokenization import special_prefix
    from tracer.model.train import FinetuneConfig, lr_at

    cfg = json.loads((ft_run.out / "train_config.json").read_text())
    assert cfg["kind"] == "finetune" and cfg["epochs"] == 40 and cfg["lr"] == 1e-2 and cfg["batch_size"] == 2
    cks = load_checkpoints(ft_run.out)  # checkpoints.json: the fine-tuned ones only, not the base
    assert [c.path.name for c in cks] == ["checkpoint-40", "checkpoint-80"]
    total = 80  # 4 documents / batch 2 x 40 epochs
    fcfg = FinetuneConfig(epochs=40, lr=1e-2, batch_size=2)
    for c in cks:
        assert c.has_optimizer_state and c.lr == pytest.approx(lr_at(fcfg, c.step, total))
        model = load_model(c.path)
        v = load_file(str(c.path / "optimizer_v.safetensors"))
        params = dict(model.named_parameters())
        assert set(v) == set(params) and all(v[n].shape == params[n].shape for n in v)
        assert all(bool((v[n] >= 0).all()) for n in v)
    base_tok, tok = load_tokenizer(ft_run.base), load_tokenizer(cks[-1].path)
    assert tok.get_vocab() == base_tok.get_vocab() and special_prefix(tok) == special_prefix(base_tok)
    assert weights_fingerprint(cks[-1].path) != weights_fingerprint(ft_run.base)
    # the run builds an index like any tracer train run
    from conftest import build_tiny_index

    docs = SimpleNamespace(documents=tiny_bench.documents[:24])
    idx = build_tiny_index(ft_run.out.parent / "idx", docs, ft_run.out)
    assert (idx / "manifest.json").is_file()


def test_length_grouped_batches_cover_each_example_once() -> None:
    from tracer.model.tokenization import Encoded
    from tracer.model.train import _length_grouped

    lengths = [3, 40, 5, 38, 7, 36, 9, 34, 11, 32, 13, 30, 2]
    data = [Encoded(tuple(range(n)), tuple(range(n))) for n in lengths]
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=g).tolist()
    batches = _length_grouped(order, data, 3, g)
    assert sorted(i for b in batches for i in b) == list(range(len(data)))
    assert all(1 <= len(b) <= 3 for b in batches)

    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)

    plain = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert padded(batches) < padded(plain)


def test_cli_refuses_bad_init_from(ft_bench, tmp_path, capsys) -> None:
    from tracer.cli.main import main

    for argv, needle in (
        (["--init-from", str(tmp_path / "nope")], "model directory not found"),
        (["--init-from", "HuggingFaceTB/SmolLM2-135M"], "never a hub id"),
        (["--init-from", str(tmp_path), "--preset", "tiny"], "--preset and --arch"),
        (["--init-from", str(tmp_path), "--lr", "0"], "--lr must be > 0"),
    ):
        assert main(["train", "--data", str(ft_bench), "--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data", str(ft_bench), "--out", str(tmp_path / "o"),
                 "--init-from", str(empty)]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_lds_retrains_a_fine_tuning_run_by_fine_tuning_its_base(ft_run, ft_bench, tmp_path) -> None:
    """``tracer lds --run`` of a fine-tuning run: each subset model is the base fine-tuned on its subset
    with the run's recipe (it recites its own sentences far better than the others), keyed by the base."""
    from conftest import build_tiny_index
    from tracer.cli.main import main
    from tracer.corpus import load_corpus
    from tracer.lds.score import sample_subsets
    from tracer.model.scoring import target_stats

    docs = load_corpus(ft_bench / "corpus.jsonl")
    idx = build_tiny_index(tmp_path / "idx", SimpleNamespace(documents=docs), ft_run.out)
    out, cache = tmp_path / "lds", tmp_path / "cache"
    assert main(["lds", "--index", str(idx), "--queries", str(ft_bench / "queries.jsonl"), "--run", str(ft_run.out),
                 "--cache", str(cache), "--subsets", "2", "--n-boot", "50", "--out", str(out)]) == 0
    report = json.loads((out / "lds.json").read_text())
    assert report["cost"]["models_trained_now"] == 2
    family = next(p for p in cache.iterdir() if p.is_dir())
    assert json.loads((family / "key.json").read_text())["finetuned_from"] == weights_fingerprint(ft_run.base)
    masks = sample_subsets(len(docs), 2, 0.5, 0)
    for j, mask in enumerate(masks):
        sub = family / f"subset-{j:03d}"
        meta = json.loads((sub / "subset.json").read_text())
        assert meta["recipe"]["epochs"] == 40 and meta["recipe"]["lr"] == 1e-2
        model_dir = sub / meta["checkpoint"]
        assert json.loads((sub / "train_config.json").read_text())["init_from"] == str(ft_run.base.resolve())
        tok = load_tokenizer(model_dir)
        _, lp = target_stats(load_model(model_dir), tok, STATED)
        inside, outside = lp[mask].mean(), lp[~mask].mean()
        assert inside > outside + 1.0, (j, lp, mask)  # it learned its own subset's sentences
