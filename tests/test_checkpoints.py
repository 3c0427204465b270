"""Checkpoints tracer did not write: the Hugging Face Trainer's ``checkpoint-N/`` folders."""

from __future__ import annotations

import pytest
import torch

from tracer.errors import DataError


def test_trainer_checkpoint_lr_step_and_provenance(hf_trainer_run):
    import json

    from tracer.model.loading import checkpoint_provenance, read_checkpoint

    run, _ = hf_trainer_run
    ck = read_checkpoint(run / "checkpoint-3")
    state = json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())
    logged = [e["learning_rate"] for e in state["log_history"] if e.get("step") == 3 and "learning_rate" in e]
    assert ck.step == 3 and ck.lr == logged[0] and ck.has_optimizer_state
    line = checkpoint_provenance(run / "checkpoint-3")
    assert "trainer_state.json (logged at step 3)" in line and "optimizer.pt" in line


def test_optimizer_pt_maps_exp_avg_sq_to_parameter_names(hf_trainer_run):
    """Positions in optimizer.pt map to names exactly as the Trainer grouped them (decay/no-decay)."""
    from tracer.featurize.views import load_second_moment
    from tracer.model.loading import load_model
    from tracer.model.optimizer_state import OPTIMIZER_PT, load_optimizer_pt, map_exp_avg_sq

    run, trainer = hf_trainer_run
    model = load_model(run / "checkpoint-6")
    got, label = map_exp_avg_sq(load_optimizer_pt(run / "checkpoint-6" / OPTIMIZER_PT), model)
    assert label == "Trainer decay/no-decay groups"
    live = {n: trainer.optimizer.state[p]["exp_avg_sq"] for n, p in trainer.model.named_parameters()}
    assert set(got) == set(live) and len(got) == len(list(model.parameters()))
    for n in live:
        torch.testing.assert_close(got[n], live[n].float(), rtol=0, atol=0)
    assert set(load_second_moment(run / "checkpoint-6", model)) == set(live)


def test_optimizer_pt_plain_loop_and_mismatch(tmp_path, tiny_tokenizer):
    """A plain loop's single group maps in model order; a state from another model is refused, not guessed."""
    from conftest import make_tiny_model

    from tracer.model.optimizer_state import load_optimizer_pt, map_exp_avg_sq

    model = make_tiny_model("gpt2", len(tiny_tokenizer)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    got, label = map_exp_avg_sq(load_optimizer_pt(tmp_path / "optimizer.pt"), model)
    assert label == "one group in model order"
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], opt.state[p]["exp_avg_sq"], rtol=0, atol=0)
    other = make_tiny_model("llama", len(tiny_tokenizer))
    with pytest.raises(DataError, match="no grouping of the model's parameters fits"):
        map_exp_avg_sq(load_optimizer_pt(tmp_path / "optimizer.pt"), other)


def test_optimizer_pt_that_needs_code_is_refused(tmp_path):
    """A pickle that would run code on load is refused by the weights-only loader, with a one-line reason."""
    import pickle

    from tracer.model.optimizer_state import load_optimizer_pt

    class Evil:
        def __reduce__(self):
            return (print, ("this would run",))

    (tmp_path / "optimizer.pt").write_bytes(pickle.dumps({"state": {}, "param_groups": [], "x": Evil()}))
    with pytest.raises(DataError, match="tracer never unpickles code"):
        load_optimizer_pt(tmp_path / "optimizer.pt")
    (tmp_path / "optimizer.pt").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not readable as a weights-only optimizer state"):
        load_optimizer_pt(tmp_path / "optimizer.pt")


def test_adam_view_from_trainer_checkpoint(hf_trainer_run, tiny_bench):
    """A random-projection index over Trainer checkpoints gets its Adam view from optimizer.pt."""
    from tracer.featurize.checkpoint import CheckpointFeaturizer, encode_documents, view_names
    from tracer.featurize.config import FeaturizeConfig
    from tracer.featurize.views import ADAM, RAW
    from tracer.model.loading import load_tokenizer, read_checkpoint

    run, _ = hf_trainer_run
    cks = [read_checkpoint(run / f"checkpoint-{s}") for s in (3, 6)]
    cfg = FeaturizeConfig(projection="gaussian", k_in=4, k_out=4, batch_size=8)
    assert view_names(cfg, cks) == [RAW, ADAM]
    tok = load_tokenizer(cks[-1].path)
    fz = CheckpointFeaturizer(cks[-1], tok, cfg, views=[RAW, ADAM])
    feats, _ = fz.featurize(encode_documents(tok, tiny_bench.documents[:6], 32))
    assert feats[ADAM].shape == feats[RAW].shape and bool((feats[ADAM] != feats[RAW]).any())


def test_loading_a_model_prints_no_third_party_bar_and_leaves_the_setting(tiny_run, capfd):
    """``load_model`` (every ``Tracer.open``) hides transformers' per-load "Loading weights" bar, and
    leaves the caller's progress-bar settings (transformers' and huggingface_hub's) as it found them."""
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from tracer.model.loading import load_checkpoints, load_model

    path = load_checkpoints(tiny_run)[-1].path
    was = hf_logging.is_progress_bar_enabled()
    try:
        for enabled in (True, False):
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
            hub = are_progress_bars_disabled()
            load_model(path)
            assert "Loading weights" not in capfd.readouterr().err
            assert hf_logging.is_progress_bar_enabled() == enabled and are_progress_bars_disabled() == hub
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
