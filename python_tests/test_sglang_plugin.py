"""The SGLang plugin (prr_ext.integrations.sglang) against the real sglang package (0.5.23).

sglang is not in the default test venv (it pins a CUDA torch and weighs ~11 GB with its dependencies):
scripts/test.sh runs this file in its own stage with `pip install --no-deps sglang` plus the few pure-Python modules
its dLLM code imports (scripts/sglang-test-requirements.txt) on PYTHONPATH. There PRR_TEST_SGLANG=1 turns a missing
sglang into an error, so the stage cannot pass by skipping.

What is checked: the entry point is discovered by sglang's own `load_plugins()`; every policy's `step()` on a real
ForwardBatch commits exactly what `prr_ext.step` commits for the same logits and state, with sglang's done-flag
contract; `run()` in the synchronous and first-done-first-out loops of sglang's base class with a stand-in model
runner; the YAML config round-trips through sglang's own config loader; bad values fail at launch naming the key.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
import torch

if importlib.util.find_spec("sglang") is None:
    if os.environ.get("PRR_TEST_SGLANG") == "1":
        raise ImportError("PRR_TEST_SGLANG=1 but sglang is not importable: the SGLang stage of scripts/test.sh puts "
                          "build/sglang-site on PYTHONPATH")
    pytest.skip("sglang is not installed (scripts/test.sh runs this file in its own stage)", allow_module_level=True)

import yaml  # noqa: E402  (sglang reads its algorithm config with PyYAML)

import prr_ext  # noqa: E402
from prr_ext.integrations import sglang as plugin  # noqa: E402
from prr_ext.integrations.sglang import PrrExt, PrrExtConfig, PrrExtConfigError, RequestState  # noqa: E402
from sglang.srt.dllm.algorithm import algo_name_to_cls, get_algorithm, get_algorithm_cls  # noqa: E402
from sglang.srt.dllm.config import DllmConfig  # noqa: E402
from sglang.srt.layers.logits_processor import LogitsProcessorOutput  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode  # noqa: E402
from sglang.srt.model_executor.model_runner import ModelRunnerOutput  # noqa: E402

BL = 8          # block size
V = 48          # vocabulary
MASK = V - 3    # the mask id (inside the vocabulary, not the last id)
PROMPT_TOKEN = 7


@pytest.fixture(scope="module")
def controller_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ctrl") / "controller")
    prr_ext.Controller.init(seed=3).save(path)
    return path


def policy_configs(controller_dir):
    """One config per policy (and a few option variants); thresholds chosen so that the adaptive rules commit
    several tokens in some steps and fall back to their floor in others on the test logits."""
    return {
        "low_confidence": {"policy": "low_confidence"},
        "low_confidence_4_steps": {"policy": "low_confidence", "steps": 4},
        "random": {"policy": "random", "seed": 11},
        "threshold": {"policy": "threshold", "tau": 0.6},
        "threshold_sampled": {"policy": "threshold", "tau": 0.6, "temperature": 0.8, "seed": 5},
        "factor": {"policy": "factor", "f": 1.0},
        "entropy_bound": {"policy": "entropy_bound", "gamma": 0.8, "confidence_dtype": "float64"},
        "prr": {"policy": "prr", "controller": controller_dir, "tau": 0.6},
        "prr_no_union": {"policy": "prr", "controller": controller_dir, "tau": 0.7, "union_schedule": False,
                         "shaping": "power"},
        "local_leap": {"policy": "local_leap", "tau": 0.8, "relaxed_tau": 0.5, "radius": 2},
        "slow_fast": {"policy": "slow_fast", "explore_steps": 2, "span_threshold": 0.2, "fill_threshold": 0.6},
        "klass": {"policy": "klass", "conf_threshold": 0.5, "kl_threshold": 0.2, "history": 1},
        "r2": {"policy": "r2", "base": {"policy": "threshold", "tau": 0.8}, "window": 3, "spatial_threshold": 0.5,
               "temporal_steps": 2, "temporal_threshold": 0.5},
    }


POLICY_CASES = ["low_confidence", "low_confidence_4_steps", "random", "threshold", "threshold_sampled", "factor",
                "entropy_bound", "prr", "prr_no_union", "local_leap", "slow_fast", "klass", "r2"]


@pytest.fixture(scope="module", autouse=True)
def registered():
    """PrrExt as sglang's load_plugins() leaves it (test_load_plugins_registers_prr_ext checks that path itself)."""
    plugin.register()
    yield


def make_algorithm(cfg: dict, fdfo: bool = False, block_size: int = BL) -> PrrExt:
    config = DllmConfig(algorithm="PrrExt", algorithm_config=dict(cfg), block_size=block_size, mask_id=MASK,
                        max_running_requests=16, first_done_first_out_mode=fdfo)
    algo = get_algorithm(config)  # through sglang's registry, as the scheduler does
    assert isinstance(algo, PrrExt)
    return algo


def make_forward_batch(ids: torch.Tensor, prompt_mask=None) -> ForwardBatch:
    """A minimal real ForwardBatch for one dLLM block per request ([bs, block_size] ids, flattened as sglang does)."""
    bs = ids.shape[0]
    fb = ForwardBatch(forward_mode=ForwardMode.DLLM_EXTEND, batch_size=bs, input_ids=ids.reshape(-1).clone(),
                      req_pool_indices=torch.arange(bs), seq_lens=torch.full((bs,), ids.shape[1]),
                      out_cache_loc=torch.zeros(ids.numel(), dtype=torch.int64), seq_lens_sum=ids.numel())
    fb.dllm_prompt_mask = prompt_mask
    return fb


def first_blocks(prompt_lens, literal_mask_row=None):
    """[bs, BL] blocks whose first prompt_lens[i] positions are prompt tokens, the rest masks; optionally one prompt
    token of `literal_mask_row` equal to the mask id (a committed literal, only protected by the prompt mask)."""
    ids = torch.full((len(prompt_lens), BL), MASK, dtype=torch.int64)
    pm = torch.zeros(len(prompt_lens), BL, dtype=torch.bool)
    for i, p in enumerate(prompt_lens):
        ids[i, :p] = PROMPT_TOKEN + torch.arange(p)
        pm[i, :p] = True
    if literal_mask_row is not None:
        assert prompt_lens[literal_mask_row] >= 2
        ids[literal_mask_row, 1] = MASK
    return ids, pm


def reference_state(algo: PrrExt, canvas: torch.Tensor) -> prr_ext.State:
    """The State a user of prr_ext.step would build for these blocks: one block of block_size at column 0, the
    plugin's steps, policy and options, and seeds from a generator seeded like the plugin's (config `seed`)."""
    s = algo.settings
    return prr_ext.State(canvas, mask_id=MASK, prompt_length=0, block_length=algo.block_size, steps=algo.steps,
                         policy=s.policy, temperature=s.temperature,
                         generator=torch.Generator().manual_seed(s.seed),
                         confidence_dtype=plugin.CONFIDENCE_DTYPES[s.confidence_dtype])


# ------------------------------------------------------------------------------------------------- discovery
def test_entry_point_is_installed():
    eps = [ep for ep in importlib.metadata.entry_points(group="sglang.srt.plugins") if ep.name == "prr_ext"]
    assert len(eps) == 1, ("the prr_ext package's sglang.srt.plugins entry point is not installed "
                           "(pip install the package; scripts/test.sh does)")
    assert eps[0].value == "prr_ext.integrations.sglang:register"
    assert eps[0].load() is plugin.register


def test_load_plugins_registers_prr_ext(monkeypatch):
    import sglang.srt.plugins as sgl_plugins

    monkeypatch.delitem(algo_name_to_cls, "PrrExt", raising=False)
    monkeypatch.setattr(sgl_plugins, "_plugins_loaded", False)
    monkeypatch.delenv("SGLANG_PLUGINS", raising=False)
    with pytest.raises(RuntimeError, match="Unknown diffusion LLM algorithm"):
        get_algorithm_cls("PrrExt")
    sgl_plugins.load_plugins()
    assert get_algorithm_cls("PrrExt") is PrrExt
    # sglang's own algorithms are still there
    assert "LowConfidence" in algo_name_to_cls


def test_launch_config_through_sglang(tmp_path):
    """The real launch path: ServerArgs -> DllmConfig.from_server_args reads the YAML -> the algorithm class from
    the registry; a tiny local model config stands in for an SDAR checkpoint (no weights are read)."""
    from sglang.srt.dllm.algorithm.base import DllmAlgorithm
    from sglang.srt.server_args import ServerArgs

    model = tmp_path / "sdar"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "architectures": ["SDARForCausalLM"], "model_type": "qwen3", "vocab_size": 64, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 8, "max_position_embeddings": 128}))
    cfg_path = tmp_path / "policy.yaml"
    cfg_path.write_text("policy: entropy_bound\ngamma: 0.25\nsteps: 4\nblock_size: 8\n")
    sa = ServerArgs(model_path=str(model), dllm_algorithm="PrrExt", dllm_algorithm_config=str(cfg_path),
                    device="cpu")
    sa.resolve_once()  # runs PrrExt.configure_server_args (sglang's dLLM launch hook)
    algo = DllmAlgorithm.from_server_args(sa)
    assert isinstance(algo, PrrExt)
    assert algo.policy == prr_ext.EntropyBound(gamma=0.25)
    assert (algo.block_size, algo.steps, algo.mask_id) == (8, 4, 151669)  # block_size from the YAML, SDAR's mask


# ------------------------------------------------------------------------------------------------- step
@pytest.mark.parametrize("with_prompt_mask", [True, False], ids=["prompt_mask", "no_prompt_mask"])
@pytest.mark.parametrize("case", POLICY_CASES)
def test_step_commits_what_prr_ext_step_commits(case, with_prompt_mask, controller_dir, rnd):
    cfg = policy_configs(controller_dir)[case]
    algo = make_algorithm(cfg)
    prompt_lens = [3, 0, 5, 2]
    ids, pm = first_blocks(prompt_lens, literal_mask_row=2 if with_prompt_mask else None)
    fb = make_forward_batch(ids, pm if with_prompt_mask else None)
    states = algo.init_step_state(fb)
    assert len(states) == 4 and all(isinstance(s, RequestState) for s in states)
    # the reference canvas: the same blocks with an ordinary token where the literal mask sits in the prompt
    ref = reference_state(algo, torch.where(pm, ids.masked_fill(ids == MASK, PROMPT_TOKEN), ids))
    base = rnd.randn(4, BL, V).float() * 3.0
    last_change = [None] * 4
    done_at = [None] * 4
    for t in range(algo.max_steps(BL)):
        logits = base + 0.3 * rnd.randn(4, BL, V).float()  # slowly moving logits (KLASS / R² streaks see history)
        before = fb.input_ids.view(4, BL).clone()
        pending = ((ref.x == MASK).any(1)).tolist()
        done = algo.step(fb, logits.reshape(4 * BL, V), states)
        prr_ext.step(logits, ref)
        after = fb.input_ids.view(4, BL)
        assert torch.equal(after, torch.where(pm, before, ref.x)), f"step {t}: commits differ from prr_ext.step"
        assert torch.equal(after[pm], ids[pm]), "a prompt position was overwritten"
        assert isinstance(done, list) and all(isinstance(d, bool) for d in done)
        # sglang's contract: done only once the forward that produced these logits saw the block's final tokens
        assert done == [not p for p in pending], f"step {t}"
        for i in range(4):
            if not torch.equal(before[i], after[i]):
                assert not done[i]
                last_change[i] = t
            if done[i] and done_at[i] is None:
                done_at[i] = t
        if all(done):
            break
    assert all(done), f"not every block finished within max_steps={algo.max_steps(BL)}"
    assert not bool(((fb.input_ids.view(4, BL) == MASK) & ~pm).any())
    assert done_at == [c + 1 for c in last_change], "a block must be reported done exactly one step after its last commit"
    assert [s.nfe for s in states] == ref.nfe.tolist()


def test_step_all_prompt_row_and_states_identity():
    """A request whose block is all prompt is done at once and commits nothing; the others are unaffected, and the
    handles keep pointing at one shared State (one op call per step in synchronous mode)."""
    algo = make_algorithm({"policy": "threshold", "tau": 0.5})
    ids, pm = first_blocks([BL, 1])
    fb = make_forward_batch(ids, pm)
    states = algo.init_step_state(fb)
    logits = torch.zeros(2 * BL, V)
    logits[:, 3] = 10.0
    assert algo.step(fb, logits, states) == [True, False]
    assert torch.equal(fb.input_ids.view(2, BL)[0], ids[0])
    assert torch.equal(fb.input_ids.view(2, BL)[1, 1:], torch.full((BL - 1,), 3))  # all confident: all committed
    shared = states[0].group
    assert shared is states[1].group and [s.row for s in states] == [0, 1]
    assert algo.step(fb, logits, states) == [True, True]
    assert states[0].group is shared


def test_state_fields_are_classified():
    """Every tensor a prr_ext.State holds is per-row state gathered on regrouping, the canvas refreshed from
    input_ids, or shared/scratch. A State field added later without classifying it here would be dropped when
    sglang's FDFO loop changes the batch, so this fails first."""
    st = prr_ext.State(torch.full((2, BL), MASK), mask_id=MASK, prompt_length=0, block_length=BL, steps=BL,
                       policy=prr_ext.PRR(prr_ext.Controller.init(seed=0)))
    tensors = {k for k, v in vars(st).items() if isinstance(v, torch.Tensor)}
    known = set(plugin.ROW_FIELDS) | set(plugin.REFRESHED_FIELDS) | set(plugin.SHARED_FIELDS)
    assert tensors <= known, f"unclassified State tensors: {sorted(tensors - known)}"
    for name in plugin.ROW_FIELDS:
        t = getattr(st, name)
        assert t.numel() == 0 or t.shape[0] == 2, name


# ------------------------------------------------------------------------------------------------- run()
class StandInModel:
    """A deterministic row-wise 'model': each position's logits depend on the tokens of its own block row (so a
    request decodes the same alone or in any batch), and change as tokens are committed."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(V, 16, generator=g)
        self.pos = torch.randn(BL, 16, generator=g)
        self.out = torch.randn(16, V, generator=g) * 2.5

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:  # [b, BL] -> [b, BL, V]
        h = self.emb[ids]
        return torch.tanh(h + self.pos + h.mean(1, keepdim=True)) @ self.out


class StandInRunner:
    """What DllmAlgorithm.run needs of sglang's ModelRunner: forward(forward_batch, pp_proxy_tensors=None)."""

    def __init__(self, model: StandInModel):
        self.model = model
        self.seen = []  # the input_ids every forward read

    def forward(self, forward_batch, pp_proxy_tensors=None):
        bs = forward_batch.batch_size
        ids = forward_batch.input_ids.view(bs, BL)
        self.seen.append(ids.clone())
        logits = self.model(ids).reshape(bs * BL, V)
        return ModelRunnerOutput(logits_output=LogitsProcessorOutput(next_token_logits=None, full_logits=logits),
                                 can_run_graph=False)


def decode_alone(algo: PrrExt, model: StandInModel, block: torch.Tensor, prompt: torch.Tensor):
    """One request's block decoded with prr_ext.step on its own (B = 1): (tokens, steps until its last commit).
    (LowConfidence's schedule may leave idle steps at the end of a block with fewer masks than steps; sglang's
    contract ends the block at the first forward that sees it complete.)"""
    st = reference_state(algo, torch.where(prompt, block.masked_fill(block == MASK, PROMPT_TOKEN), block)[None])
    steps = 0
    while bool((st.x == MASK).any()):
        assert not st.done, "the reference left the block with masks"
        prr_ext.step(model(st.x), st)
        steps += 1
    return torch.where(prompt, block, st.x[0]), steps


RUN_CASES = ["low_confidence", "threshold", "entropy_bound", "prr", "slow_fast", "klass", "r2"]


@pytest.mark.parametrize("case", RUN_CASES)
def test_run_synchronous(case, controller_dir, rnd):
    algo = make_algorithm(policy_configs(controller_dir)[case], fdfo=False)
    model = StandInModel(rnd.int(0, 2 ** 31))
    runner = StandInRunner(model)
    ids, pm = first_blocks([2, 0, 6])
    fb = make_forward_batch(ids, pm)
    logits_output, tokens, accept, states_out, can_run_graph = algo.run(runner, fb)
    assert accept is None and states_out is None and can_run_graph is False
    assert isinstance(logits_output, LogitsProcessorOutput)
    steps = []
    for i in range(3):
        want, n = decode_alone(algo, model, ids[i], pm[i])
        assert torch.equal(tokens[i], want[int(pm[i].sum()):]), f"request {i}"  # only the generated positions
        steps.append(n)
    # the loop stops at the first step at which every block is done: one forward after the slowest block's last
    # commit, and that forward saw every block complete
    assert len(runner.seen) == max(steps) + 1
    assert not bool((runner.seen[-1] == MASK).any())


@pytest.mark.parametrize("case", RUN_CASES)
def test_run_first_done_first_out(case, controller_dir, rnd):
    """sglang's FDFO loop: one forward + one step per round; unfinished requests carry their RequestState and
    partial block into the next round (the scheduler's part, played here), finished ones leave and new requests
    join, and the scheduler may order the batch differently each round."""
    algo = make_algorithm(policy_configs(controller_dir)[case], fdfo=True)
    model = StandInModel(rnd.int(0, 2 ** 31))
    runner = StandInRunner(model)
    blocks, prompts = first_blocks([3, 0, 5, 1, 0, 7])
    waiting = list(range(6))
    running = {}  # request -> (its block as carried, its state)
    results, rounds = {}, {}
    for rnd_i in range(60):
        while waiting and len(running) < 3:  # at most 3 requests per batch: requests join while others run
            r = waiting.pop(0)
            running[r] = (blocks[r].clone(), None)
            rounds[r] = 0
        if not running:
            break
        order = sorted(running, reverse=bool(rnd_i % 2))  # the batch order changes from round to round
        ids = torch.stack([running[r][0] for r in order])
        fb = make_forward_batch(ids, torch.stack([prompts[r] for r in order]))
        out = algo.run(runner, fb, [running[r][1] for r in order])
        _, next_ids, accept, states_out, _ = out
        assert len(next_ids) == len(order) and all(len(t) == BL for t in next_ids)
        for k, r in enumerate(order):
            rounds[r] += 1
            if accept[k] == BL:
                assert states_out[k] is None
                results[r] = torch.tensor(next_ids[k])
                del running[r]
            else:
                assert accept[k] == 0 and isinstance(states_out[k], RequestState)
                # the carried state is this request's own: its step counters went on across rounds and regroupings
                assert states_out[k].nfe == rounds[r], f"request {r}"
                running[r] = (torch.tensor(next_ids[k]), states_out[k])
    assert sorted(results) == list(range(6)), "every request must finish"
    for r in range(6):
        want, steps = decode_alone(algo, model, blocks[r], prompts[r])
        assert torch.equal(results[r], want), f"request {r}"
        assert rounds[r] == steps + 1, f"request {r}: done must come one forward after its last commit"


# ------------------------------------------------------------------------------------------------- config
def test_yaml_round_trip(controller_dir, tmp_path):
    for name, cfg in policy_configs(controller_dir).items():
        parsed = PrrExtConfig.from_dict(cfg)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(parsed.to_dict()))
        again = PrrExtConfig.from_yaml(str(path))
        assert again == parsed and again.to_dict() == parsed.to_dict(), name
        assert type(again.policy) is type(parsed.policy)
        fields = [f.name for f in dataclasses.fields(parsed.policy) if f.name != "controller"]
        assert all(getattr(again.policy, f) == getattr(parsed.policy, f) for f in fields), name
        # the mapping names every parameter, defaults included
        assert set(fields) <= set(parsed.to_dict()), name
    assert PrrExtConfig.from_dict({"policy": "threshold"}).policy == prr_ext.Threshold()


def test_prr_tau_from_the_controller_folder(controller_dir, tmp_path):
    import shutil

    folder = tmp_path / "trained"
    shutil.copytree(controller_dir, folder)
    (folder / "policy.json").write_text(json.dumps({"tau": 0.77}))
    assert PrrExtConfig.from_dict({"policy": "prr", "controller": str(folder)}).policy.tau == 0.77
    assert PrrExtConfig.from_dict({"policy": "prr", "controller": str(folder), "tau": 0.5}).policy.tau == 0.5
    assert PrrExtConfig.from_dict({"policy": "prr", "controller": controller_dir}).policy.tau == 0.9


def bad_configs(controller_dir, tmp_path):
    extra = tmp_path / "extra_ctrl"
    prr_ext.Controller.init(seed=0, extra_features=2).save(str(extra))
    return [
        ({}, "'policy': missing"),
        ({"policy": "fast"}, "'policy': got 'fast'; must be one of"),
        ({"policy": "threshold", "taux": 0.9}, "key 'taux': unknown key"),
        ({"policy": "threshold", "f": 1.0}, "key 'f': unknown key"),
        ({"policy": "threshold", "tau": 1.5}, "tau must lie in [0, 1], got 1.5"),
        ({"policy": "threshold", "tau": "high"}, "tau must be a number"),
        ({"policy": "factor", "f": 0}, "f must be a finite number > 0"),
        ({"policy": "low_confidence", "steps": 0}, "key 'steps': must be an int in [1, 2147483647], got 0"),
        ({"policy": "low_confidence", "steps": 2.5}, "key 'steps'"),
        ({"policy": "threshold", "steps": 2 ** 31}, "key 'steps': must be an int in [1, 2147483647], got 2147483648"),
        ({"policy": "low_confidence", "block_size": -4}, "key 'block_size'"),
        ({"policy": "threshold", "block_size": 2 ** 31}, "key 'block_size': must be an int in [1, 2147483647]"),
        ({"policy": "low_confidence", "temperature": -1}, "key 'temperature'"),
        ({"policy": "low_confidence", "confidence_dtype": "int8"}, "key 'confidence_dtype'"),
        ({"policy": "threshold", "confidence_dtype": ["float32"]},
         "key 'confidence_dtype': must be one of ['float32', 'bfloat16', 'float16', 'float64'], got ['float32']"),
        ({"policy": "threshold", "confidence_dtype": {"dtype": "float32"}}, "key 'confidence_dtype'"),
        ({"policy": "low_confidence", "seed": -3}, "key 'seed'"),
        ({"policy": "threshold", "seed": 2 ** 64}, f"key 'seed': must be an int in [0, {2 ** 64 - 1}], got {2 ** 64}"),
        ({"policy": "prr"}, "key 'controller': policy 'prr' needs the path"),
        ({"policy": "prr", "controller": str(tmp_path / "nowhere")}, "key 'controller': controller file not found"),
        ({"policy": "prr", "controller": str(extra)}, "key 'controller': the controller at"),
        ({"policy": "prr", "controller": controller_dir, "shaping": "cubic"}, "shaping must be one of"),
        ({"policy": "r2", "base": {"policy": "r2"}}, "key 'base.policy'"),
        ({"policy": ["threshold"]}, "'policy': got ['threshold']; must be one of"),
        ({"policy": "r2", "base": {"policy": "threshold", "tau": 2}}, "key 'base': policy 'threshold': tau must lie"),
        ({"policy": "r2", "base": 0.9}, "key 'base': must be a policy name or a mapping"),
        ({"policy": "r2", "base": {"policy": "threshold", "window": 3}}, "key 'base.window'"),
        ({"policy": "r2", "window": 0}, "window must be an int in [1, 64]"),
        ({"policy": "local_leap", "tau": 0.5, "relaxed_tau": 0.8}, "relaxed_tau (0.8) must be <= tau"),
        ({"policy": "klass", "history": 0}, "history must be an int >= 1"),
    ]


def test_bad_config_values_name_the_key(controller_dir, tmp_path):
    for cfg, message in bad_configs(controller_dir, tmp_path):
        with pytest.raises(PrrExtConfigError) as e:
            PrrExtConfig.from_dict(cfg, source="policy.yaml")
        assert message in str(e.value) and "policy.yaml" in str(e.value), (cfg, str(e.value))
        # the algorithm itself refuses it too (each scheduler process builds one)
        with pytest.raises(PrrExtConfigError):
            make_algorithm(cfg)


def test_config_bounds_are_inclusive():
    """The largest seed a torch.Generator takes and the largest steps / block size a State takes pass the launch
    check, and the algorithm builds with them (its generator seeded with that seed)."""
    top = {"policy": "threshold", "seed": 2 ** 64 - 1, "steps": 2 ** 31 - 1, "block_size": 2 ** 31 - 1}
    cfg = PrrExtConfig.from_dict(top)
    assert (cfg.seed, cfg.steps, cfg.block_size) == (2 ** 64 - 1, 2 ** 31 - 1, 2 ** 31 - 1)
    assert PrrExtConfig.from_dict(cfg.to_dict()) == cfg
    algo = make_algorithm({"policy": "threshold", "seed": 2 ** 64 - 1, "steps": 2 ** 31 - 1})
    assert algo.generator.initial_seed() == 2 ** 64 - 1 and algo.steps == 2 ** 31 - 1


def test_bad_config_fails_at_launch(tmp_path):
    """sglang's launch-time resolution runs PrrExt.configure_server_args: a bad file stops the launch with an
    error that names the file and the key, before any worker process starts."""
    from sglang.srt.server_args import ServerArgs

    model = tmp_path / "llada2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LLaDA2MoeModelLM"], "model_type": "qwen3",
                                                   "vocab_size": 64}))
    cases = [("policy: threshold\ntau: 1.5\n", "tau must lie in [0, 1]"),
             ("policy: treshold\n", "key 'policy'"),
             ("policy: threshold\nsteps: many\n", "key 'steps'"),
             ("policy: threshold\nsteps: 1000000000000\n", "key 'steps'"),
             ("policy: threshold\nseed: 1180591620717411303424\n", "key 'seed'"),  # 2**70
             ("policy: threshold\nconfidence_dtype: [float32]\n", "key 'confidence_dtype'"),
             ("- policy\n- threshold\n", "must be a mapping"),
             ("policy: [unclosed\n", "not valid YAML")]
    for text, message in cases:
        path = tmp_path / "policy.yaml"
        path.write_text(text)
        sa = ServerArgs(model_path=str(model), dllm_algorithm="PrrExt", dllm_algorithm_config=str(path),
                        device="cpu")
        with pytest.raises(PrrExtConfigError) as e:
            sa.resolve_once()
        assert message in str(e.value) and str(path) in str(e.value), str(e.value)
    sa = ServerArgs(model_path=str(model), dllm_algorithm="PrrExt", device="cpu")
    with pytest.raises(PrrExtConfigError, match="needs --dllm-algorithm-config"):
        sa.resolve_once()
    sa = ServerArgs(model_path=str(model), dllm_algorithm="PrrExt", dllm_algorithm_config=str(tmp_path / "no.yaml"),
                    device="cpu")
    with pytest.raises(PrrExtConfigError, match="cannot read --dllm-algorithm-config"):
        sa.resolve_once()


def test_uniform_canvas_models_are_refused():
    config = DllmConfig(algorithm="PrrExt", algorithm_config={"policy": "threshold"}, block_size=BL, mask_id=-1,
                        max_running_requests=1)
    with pytest.raises(ValueError, match="needs a mask token.*Gemma4Renoise"):
        PrrExt(config)


def test_validate_request():
    from sglang.srt.sampling.sampling_params import SamplingParams

    def req(**sampling):
        return SimpleNamespace(sampling_params=SamplingParams(**sampling), custom_logit_processor=None)

    assert PrrExt.validate_request(req()) is None
    assert PrrExt.validate_request(req(temperature=0.7, top_p=0.9, max_new_tokens=64)) is None  # ignored, documented
    msg = PrrExt.validate_request(req(frequency_penalty=0.5, regex="[a-z]+"))
    assert "frequency_penalty" in msg and "regex" in msg and "PrrExt" in msg
    # sglang's scheduler asks the configured algorithm through DllmConfig.validate_request
    config = DllmConfig(algorithm="PrrExt", algorithm_config={"policy": "threshold"}, block_size=BL, mask_id=MASK,
                        max_running_requests=1)
    assert "repetition_penalty" in config.validate_request(req(repetition_penalty=1.3))
