"""prr_testbed.finetune_r2 (R² fine-tuning): trajectory collection and filtering on a scripted oracle model, the
trajectory loss on a tiny model, the command end to end on a tiny checkpoint, its usage errors, and
compare_sweeps on synthetic sweeps. CPU, a few seconds."""
import json
import os
import random

import pytest
import torch

from prr_testbed import MODEL_DIR
from prr_testbed import compare_sweeps as CS
from prr_testbed import finetune_r2 as R2
from prr_testbed import tasks as T
from prr_testbed.model import MaskedDiffusionLM, ModelConfig
from prr_testbed.tokenizer import CharTokenizer
from prr_testbed.train_model import encode_example

TOK = CharTokenizer()


def tiny_model(seed=0) -> MaskedDiffusionLM:
    cfg = ModelConfig.for_tokenizer(TOK, d_model=32, n_layers=1, n_heads=2, d_ff=64)
    m = MaskedDiffusionLM(cfg)
    m.reset_parameters(torch.Generator().manual_seed(seed))
    return m


def train_examples(n, family="arith"):
    rng = random.Random(f"test_finetune_r2/{family}")
    return [T.get_family(family).sample_split(rng, "train") for _ in range(n)]


class OracleModel:
    """Logits that put the reference response (or a scripted wrong token) on every generation slot; slots 0, 3,
    6, ... are confident (p ~ 0.83), the others not (p ~ 0.2), so Threshold(0.5) commits a few slots on the first
    step of a block and one slot per step afterwards."""

    WRONG_SLOT = 4

    def __init__(self, examples, wrong_prompts, G):
        self.config = ModelConfig.for_tokenizer(TOK)
        self.tokenizer = TOK
        self.G = G
        self.want = {}
        for ex in examples:
            ids, plen = encode_example(TOK, ex, G)
            gen = ids[plen:]
            if ex.prompt in wrong_prompts:
                gen = list(gen)
                gen[self.WRONG_SLOT] = TOK.encode("9")[0] if gen[self.WRONG_SLOT] != TOK.encode("9")[0] \
                    else TOK.encode("8")[0]
            self.want[tuple(ids[:plen])] = gen

    def __call__(self, x, attention_mask=None):
        B, L = x.shape
        logits = torch.zeros(B, L, TOK.vocab_size)
        logits[..., TOK.mask_id] = -30.0
        gs = L - self.G
        for b in range(B):
            prompt = tuple(v for v in x[b, :gs].tolist() if v != TOK.pad_id)
            for j, t in enumerate(self.want[prompt]):
                logits[b, gs + j, t] = 6.0 if j % 3 == 0 else 3.0
        return logits


@pytest.fixture(scope="module")
def oracle_run():
    fam = T.get_family("arith")
    exs = train_examples(6)
    wrong = {exs[1].prompt, exs[4].prompt}
    model = OracleModel(exs, wrong, fam.gen_length)
    trajs = R2.collect_trajectories(model, fam, exs, (0.5,), batch_size=4)
    return fam, exs, wrong, trajs


def test_collection_records_visited_canvases_and_acceptance(oracle_run):
    fam, exs, wrong, trajs = oracle_run
    assert [t.accepted for t in trajs] == [e.prompt not in wrong for e in exs]
    for t in trajs:
        assert t.states[0] == [TOK.mask_id] * fam.gen_length      # the first canvas: everything masked
        assert len(t.states) == t.nfe > 2                         # one visited canvas per forward of this row
        for s, nxt in zip(t.states, t.states[1:] + [t.final]):    # commits are final and only add tokens
            assert all(v == TOK.mask_id or v == w for v, w in zip(s, nxt))
            assert sum(v == TOK.mask_id for v in nxt) < sum(v == TOK.mask_id for v in s)


def test_training_states_keep_only_accepted_trajectories(oracle_run):
    fam, exs, wrong, trajs = oracle_run
    states = R2.training_states(trajs, TOK.mask_id, fam.block_length, failed_prefixes=False, late_weight=2.0)
    accepted = [t for t in trajs if t.accepted]
    assert len(states) == sum(len(t.states) for t in accepted)
    finals = {tuple(t.prompt_ids): t.final for t in accepted}
    assert all(tuple(s.prompt_ids) in finals and s.target == finals[tuple(s.prompt_ids)] for s in states)
    # weights: only masked slots of the active block; those committed on this very step weigh 1, later ones 3
    t = accepted[0]
    first = R2.training_states([t], TOK.mask_id, fam.block_length, late_weight=2.0)[0]
    committed_now = [j for j in range(fam.gen_length) if t.states[1][j] != TOK.mask_id]
    assert committed_now and all(first.weight[j] == 1.0 for j in committed_now)
    assert all(first.weight[j] == 3.0 for j in range(fam.block_length) if j not in committed_now)
    assert all(w == 0.0 for w in first.weight[fam.block_length:])  # the second block is not active yet


def test_failed_prefixes_stop_at_the_first_wrong_commit(oracle_run):
    fam, exs, wrong, trajs = oracle_run
    rejected = [t for t in trajs if not t.accepted]
    states = R2.training_states(rejected, TOK.mask_id, fam.block_length, failed_prefixes=True)
    assert states
    for t in rejected:
        mine = [s for s in states if s.prompt_ids == t.prompt_ids]
        assert all(s.target == t.reference for s in mine)
        # every kept canvas agrees with the reference; the next canvas of the trajectory holds the wrong slot
        assert all(v in (TOK.mask_id, r) for s in mine for v, r in zip(s.canvas, t.reference))
        k = len(mine)
        nxt = t.states[k] if k < len(t.states) else t.final
        assert nxt[OracleModel.WRONG_SLOT] != t.reference[OracleModel.WRONG_SLOT]
        assert mine[-1].canvas[OracleModel.WRONG_SLOT] == TOK.mask_id


def test_trajectory_loss_decreases_on_a_fixed_batch(oracle_run):
    fam, exs, wrong, trajs = oracle_run
    states = R2.training_states(trajs, TOK.mask_id, fam.block_length, failed_prefixes=True, late_weight=1.0)
    batch = R2.collate_states(states, TOK.pad_id)
    assert batch["ids"].shape == batch["target"].shape == batch["weight"].shape
    assert ((batch["target"] != R2.IGNORE) == (batch["weight"] > 0)).all()
    model = tiny_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = R2.trajectory_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_command_writes_a_loadable_model(tmp_path, capsys):
    init = tmp_path / "init"
    tiny_model().save_pretrained(str(init))
    out = tmp_path / "out"
    meta = R2.main(["--init-from", str(init), "--out", str(out), "--families", "arith", "--prompts", "8",
                    "--rounds", "2", "--steps", "3", "--batch-size", "4", "--sft-batch-size", "4",
                    "--decode-batch-size", "8", "--eval-n", "0", "--device", "cpu", "--no-progress"])
    assert "wrote" in capsys.readouterr().out
    loaded = MaskedDiffusionLM.from_pretrained(str(out))
    before = MaskedDiffusionLM.from_pretrained(str(init))
    assert loaded.config == before.config
    assert any(not torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), before.state_dict().values()))
    with open(out / "config.json") as f:
        record = json.load(f)["training"]
    assert [r["round"] for r in record["rounds"]] == [1, 2] and record["rounds"] == meta["rounds"]
    assert not any(f.endswith((".pt", ".pkl", ".bin")) for f in os.listdir(out))


def test_nothing_kept_is_a_clear_error(tmp_path):
    init = tmp_path / "init"
    tiny_model().save_pretrained(str(init))   # random weights: no arith answer is right
    with pytest.raises(SystemExit, match="no trajectory was kept"):
        R2.main(["--init-from", str(init), "--out", str(tmp_path / "o"), "--families", "arith", "--prompts", "4",
                 "--rounds", "1", "--steps", "1", "--eval-n", "0", "--no-failed-prefixes", "--device", "cpu",
                 "--no-progress"])


@pytest.mark.parametrize("args, option", [
    (["--taus", "0"], "--taus"), (["--taus", "0.5,x"], "--taus"), (["--steps", "0"], "--steps"),
    (["--prompts", "-1"], "--prompts"), (["--families", "arith,nope"], "--families"),
    (["--mix", "1,2"], "--mix"), (["--lr", "0"], "--lr"), (["--late-weight", "-1"], "--late-weight"),
    (["--init-from", "/nonexistent/model"], "--init-from"), (["--out", MODEL_DIR], "--out"),
    (["--device", "tpu"], "--device")])
def test_usage_errors_name_the_argument(args, option, capsys, tmp_path):
    argv = ["--out", str(tmp_path / "o")] + args
    with pytest.raises(SystemExit) as e:
        R2.parse_args(argv)
    assert e.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def _sweep(correct_by_label, nfe=2):
    rows = []
    for label, correct in correct_by_label.items():
        rows.append({"task": "arith", "label": label, "policy": label.split("(")[0].lower(), "correct": correct,
                     "nfe_per_prompt": [nfe] * len(correct), "gen_length": 24,
                     "accuracy": 100.0 * sum(correct) / len(correct), "mean_nfe": float(nfe),
                     "tokens_per_forward": 24 / nfe})
    return {"meta": {"split": "test"}, "results": rows}


def test_compare_sweeps_names_a_change_only_beyond_noise():
    n = 200
    a = _sweep({"Threshold(tau=0.5)": [1] * 150 + [0] * 50, "Threshold(tau=0.9)": [1] * 190 + [0] * 10})
    b = _sweep({"Threshold(tau=0.5)": [1] * 190 + [0] * 10,
                "Threshold(tau=0.9)": [0] * 3 + [1] * 187 + [1] * 2 + [0] * 8})  # 3 lost, 2 gained
    doc = CS.compare(a, b, n_boot=500)
    by = {p["label"]: p for p in doc["points"]}
    big, small = by["Threshold(tau=0.5)"], by["Threshold(tau=0.9)"]
    assert big["accuracy_change"] == pytest.approx(20.0) and big["accuracy_change_interval"][0] > 0
    assert "after" in big["verdict"] and big["p_value"] < 0.05
    assert small["accuracy_change_interval"][0] < 0 < small["accuracy_change_interval"][1] and small["p_value"] > 0.5
    assert big["nfe_change"] == 0.0 and big["n"] == n
    aup = doc["aup"]["arith"]["threshold"]
    assert aup["change"] > 0 and aup["change_interval"][0] > 0
    with pytest.raises(ValueError, match="same number of prompts"):
        CS.compare(a, _sweep({"Threshold(tau=0.5)": [1] * 10}), n_boot=10)
