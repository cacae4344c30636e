"""SGLang plugin: every prr_ext commit rule as an SGLang dLLM algorithm.

Installing prr_ext registers the entry point ``prr_ext`` in group ``sglang.srt.plugins``; SGLang's
``load_plugins()`` runs `register` in every server process, which adds `PrrExt` to SGLang's dLLM algorithm
registry. A server then decodes with any prr_ext policy::

    python -m sglang.launch_server --model-path inclusionAI/LLaDA2.0-mini \\
        --dllm-algorithm PrrExt --dllm-algorithm-config policy.yaml

with ``policy.yaml`` for instance::

    policy: threshold      # low_confidence | random | threshold | factor | entropy_bound | prr | local_leap |
    tau: 0.9               #   slow_fast | klass | r2, then that policy's keyword arguments
    steps: 32              # steps per block (LLaDA's schedule k_i); default: the block size

How SGLang's block maps onto prr_ext (see docs/engines.md):

* SGLang hands the algorithm one block per request: ``forward_batch.input_ids`` ``[bs * block_size]`` (the prompt's
  tail in a request's first block, then mask tokens) and ``full_logits`` ``[bs * block_size, V]``; the prefix lives
  in SGLang's paged KV cache. Each block of each request is decoded as a one-block `prr_ext.State` canvas
  (``gen_start=0``, ``block_length=block_size``, ``steps`` steps for the block), so every rule, its schedule and
  PRR's trajectory features run exactly as `prr_ext.step` runs them on that canvas.
* The rows of a batch share one State, so a step is one op call (one kernel launch on CUDA). Each entry of
  SGLang's ``states`` list is a `RequestState`, a handle to the request's row; in first-done-first-out mode SGLang
  carries unfinished handles from round to round, and when the batch's rows change the rows are gathered into a
  new State (a few small device copies, no host synchronisation).
* Prompt positions (``forward_batch.dllm_prompt_mask``, or every non-mask token when SGLang passes none) are
  never committed, even when a committed token equals the mask id.
* Done flags follow SGLang's contract: a block is reported done at the first step whose logits come from a
  forward that saw all of its tokens, i.e. one step after its last commit. `PrrExt.step` synchronises once, to
  turn the flags into Python booleans, as SGLang's built-in algorithms do.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .. import ops
from ..constants import MAX_RULE_INT, NUM_BASE_FEATURES, RS_BLOCK, RS_NFE
from ..controller import Controller, ControllerFormatError, tuned_tau
from ..policies import (KLASS, PRR, R2, EntropyBound, Factor, LocalLeap, LowConfidence, Policy, RandomRemask, SlowFast,
                        Threshold)
from ..state import State

try:
    from sglang.srt.dllm.algorithm.base import DllmAlgorithm
except ImportError as e:  # pragma: no cover - exercised only without sglang
    raise ImportError("prr_ext.integrations.sglang needs SGLang (>= 0.5.23): pip install 'prr_ext[sglang]' "
                      f"({e})") from e

__all__ = ["PrrExt", "PrrExtConfig", "RequestState", "register", "ALGORITHM_NAME", "POLICIES"]

ALGORITHM_NAME = "PrrExt"

# YAML name -> policy class; the keys a policy accepts are its dataclass fields.
POLICIES: Dict[str, type] = {
    "low_confidence": LowConfidence, "random": RandomRemask, "threshold": Threshold, "factor": Factor,
    "entropy_bound": EntropyBound, "prr": PRR, "local_leap": LocalLeap, "slow_fast": SlowFast, "klass": KLASS,
    "r2": R2,
}
CONFIDENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                     "float64": torch.float64}
# Keys of the YAML mapping besides the policy's own; `block_size` is also read by SGLang's DllmConfig (it overrides
# the model's block size there), so it is validated here too.
GENERAL_KEYS = ("policy", "steps", "temperature", "confidence_dtype", "seed", "block_size")


class PrrExtConfigError(ValueError):
    """A bad value in the PrrExt algorithm config; the message names the file (or source) and the key."""


def _fail(source: str, key: str, why: str) -> PrrExtConfigError:
    return PrrExtConfigError(f"{ALGORITHM_NAME} config ({source}): key {key!r}: {why}")


def _policy_keys(cls: type) -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _parse_policy(spec: Any, source: str, where: str = "") -> Tuple[Policy, Dict[str, Any]]:
    """(policy, normalised mapping) from `{policy: name, <its keyword arguments>}` (or a bare name for R2's base)."""
    key = f"{where}policy"
    if isinstance(spec, str):
        spec = {"policy": spec}
    if not isinstance(spec, Mapping):
        raise _fail(source, where.rstrip(".") or "policy", f"must be a policy name or a mapping with a 'policy' key, "
                                                            f"got {type(spec).__name__}")
    name = spec.get("policy")
    if name is None:
        raise _fail(source, key, f"missing; one of {sorted(POLICIES)}")
    if not isinstance(name, str) or name not in POLICIES:
        raise _fail(source, key, f"must be one of {sorted(POLICIES)}, got {name!r}")
    cls = POLICIES[name]
    allowed = _policy_keys(cls)
    params = {k: v for k, v in spec.items() if k != "policy"}
    for k in params:
        if k not in allowed:
            raise _fail(source, f"{where}{k}", f"not a parameter of policy {name!r} (its parameters: "
                                               f"{', '.join(allowed) or 'none'})")
    kwargs = dict(params)
    normal: Dict[str, Any] = {"policy": name}
    if cls is PRR:
        kwargs["controller"], tuned_tau = _load_controller(params.get("controller"), source, f"{where}controller")
        if "tau" not in params and tuned_tau is not None:
            kwargs["tau"] = tuned_tau  # the tau `python -m prr_ext.train` tuned with this controller
    if cls is R2:
        if where:
            raise _fail(source, f"{where}policy", "R2's base must not itself be 'r2'")
        kwargs["base"], normal_base = _parse_policy(params.get("base", "threshold"), source, "base.")
    try:
        policy = cls(**kwargs)
    except (TypeError, ValueError) as e:
        # the policies' messages name the parameter ("tau must lie in [0, 1], got 1.5")
        within = f"key {where.rstrip('.')!r}: " if where else ""
        raise PrrExtConfigError(f"{ALGORITHM_NAME} config ({source}): {within}policy {name!r}: {e}") from None
    for k in allowed:  # every parameter, defaults included, so that the mapping says what runs
        v = getattr(policy, k)
        if cls is PRR and k == "controller":
            v = os.path.abspath(params["controller"])
        elif cls is R2 and k == "base":
            v = normal_base
        normal[k] = v
    return policy, normal


def _load_controller(path: Any, source: str, key: str) -> Tuple[Controller, Optional[float]]:
    if path is None:
        raise _fail(source, key, "policy 'prr' needs the path of a controller folder (prr_ext.Controller.save, or "
                                 "`python -m prr_ext.train --out DIR` -> DIR/controller)")
    if not isinstance(path, str):
        raise _fail(source, key, f"must be a path (string), got {type(path).__name__}")
    try:
        ctrl = Controller.load(path)
    except ControllerFormatError as e:
        raise _fail(source, key, str(e)) from None
    if ctrl.extra_features:
        raise _fail(source, key, f"the controller at {path} takes {ctrl.extra_features} extra features per token; "
                                 f"the SGLang plugin computes the {NUM_BASE_FEATURES} base features only")
    try:
        tau = tuned_tau(path)
    except ControllerFormatError as e:
        raise _fail(source, key, f"{e}; or set 'tau' in the config") from None
    return ctrl, tau


# Bounds checked at launch, naming the key, rather than failing in every worker or at the first request: `seed`
# seeds a torch.Generator (unsigned 64-bit seeds); `steps` and `block_size` become a State's steps and block length,
# and MAX_RULE_INT (2**31 - 1) for both keeps the schedule's products of positions and steps inside int64 (State
# refuses more steps than that).
MAX_SEED = 2 ** 64 - 1


def _check_int(source: str, key: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _fail(source, key, f"must be an int in [{lo}, {hi}], got {v!r}")
    return v


@dataclasses.dataclass(frozen=True)
class PrrExtConfig:
    """The PrrExt algorithm's settings, read from SGLang's ``--dllm-algorithm-config`` YAML mapping.

    Parameters
    ----------
    policy : prr_ext.Policy
        The commit rule. YAML: ``policy: <name>`` (a key of `POLICIES`) plus the policy's keyword arguments at the
        top level (``tau: 0.9``; PRR: ``controller: <folder>``, its tau defaulting to the folder's tuned
        ``policy.json`` tau; R2: ``base: {policy: threshold, tau: 0.9}`` plus R2's own keys).
    spec : dict
        The policy's normalised mapping (every parameter, defaults included; PRR's controller as an absolute path).
    steps : int or None
        Denoising steps per block, 1 to 2**31 - 1 (LLaDA's schedule k_i spreads a block's masks over them). None:
        the block size, i.e. at least one token per step.
    temperature : float
        0 = greedy; > 0 samples candidates by Gumbel-max (Philox noise keyed by `seed`). SGLang's per-request
        temperature / top_p / top_k are not used.
    confidence_dtype : str
        ``float32`` (default), ``bfloat16``, ``float16`` or ``float64``: the softmax dtype behind the confidence.
    seed : int
        Seeds the per-request Philox streams; 0 to 2**64 - 1. Every tensor-parallel rank draws the same seeds (they
        depend only on the sequence of batches, which all ranks share), so the ranks commit identical tokens.
    block_size : int or None
        SGLang's own key (it overrides the model's block size); validated here (1 to 2**31 - 1), None when absent.

    Examples
    --------
    >>> cfg = PrrExtConfig.from_dict({"policy": "threshold", "tau": 0.8, "steps": 16})
    >>> cfg.policy
    Threshold(tau=0.8)
    >>> PrrExtConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    policy: Policy
    spec: Dict[str, Any]
    steps: Optional[int] = None
    temperature: float = 0.0
    confidence_dtype: str = "float32"
    seed: int = 0
    block_size: Optional[int] = None

    def __eq__(self, other) -> bool:  # by value (PRR's Controller object compares by identity)
        return isinstance(other, PrrExtConfig) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    @classmethod
    def from_dict(cls, mapping: Optional[Mapping[str, Any]], source: str = "the dLLM algorithm config") \
            -> "PrrExtConfig":
        """Validate and parse a config mapping; a bad value raises `PrrExtConfigError` naming `source` and the key.

        Examples
        --------
        >>> PrrExtConfig.from_dict({"policy": "r2", "base": {"policy": "factor", "f": 1.0}, "window": 4}).policy.base
        Factor(f=1.0, variant='fast-dllm')
        """
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise PrrExtConfigError(f"{ALGORITHM_NAME} config ({source}): must be a mapping, got "
                                    f"{type(mapping).__name__}")
        name = mapping.get("policy")
        if not isinstance(name, str) or name not in POLICIES:
            why = "missing" if name is None else f"got {name!r}"
            raise _fail(source, "policy", f"{why}; must be one of {sorted(POLICIES)}")
        policy_keys = _policy_keys(POLICIES[name])
        for k in mapping:
            if k not in GENERAL_KEYS and k not in policy_keys:
                allowed = list(GENERAL_KEYS) + list(policy_keys)
                raise _fail(source, k, f"unknown key (allowed here: {', '.join(allowed)})")
        policy, spec = _parse_policy({k: v for k, v in mapping.items() if k == "policy" or k in policy_keys}, source)
        steps = mapping.get("steps")
        if steps is not None:
            steps = _check_int(source, "steps", steps, 1, MAX_RULE_INT)
        block_size = mapping.get("block_size")
        if block_size is not None:
            block_size = _check_int(source, "block_size", block_size, 1, MAX_RULE_INT)
        temperature = mapping.get("temperature", 0.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                temperature >= 0.0) or math.isinf(temperature):
            raise _fail(source, "temperature", f"must be a finite number >= 0, got {temperature!r}")
        dtype = mapping.get("confidence_dtype", "float32")
        if not isinstance(dtype, str) or dtype not in CONFIDENCE_DTYPES:  # a str first: a YAML list is unhashable
            raise _fail(source, "confidence_dtype", f"must be one of {list(CONFIDENCE_DTYPES)}, got {dtype!r}")
        seed = _check_int(source, "seed", mapping.get("seed", 0), 0, MAX_SEED)
        return cls(policy=policy, spec=spec, steps=steps, temperature=float(temperature), confidence_dtype=dtype,
                   seed=seed, block_size=block_size)

    @classmethod
    def from_yaml(cls, path: str) -> "PrrExtConfig":
        """Read and validate the YAML file given to ``--dllm-algorithm-config``.

        Examples
        --------
        >>> cfg = PrrExtConfig.from_yaml("policy.yaml")  # doctest: +SKIP
        """
        import yaml

        try:
            with open(path) as f:
                mapping = yaml.safe_load(f)
        except OSError as e:
            raise PrrExtConfigError(f"{ALGORITHM_NAME} config: cannot read --dllm-algorithm-config {path}: {e}") \
                from None
        except yaml.YAMLError as e:
            raise PrrExtConfigError(f"{ALGORITHM_NAME} config: {path} is not valid YAML: {e}") from None
        return cls.from_dict(mapping, source=path)

    def to_dict(self) -> Dict[str, Any]:
        """A mapping that `from_dict` (or a YAML dump of it, read back) turns into an equal config."""
        out: Dict[str, Any] = dict(self.spec)
        if self.steps is not None:
            out["steps"] = self.steps
        out.update(temperature=self.temperature, confidence_dtype=self.confidence_dtype, seed=self.seed)
        if self.block_size is not None:
            out["block_size"] = self.block_size
        return out


class RequestState:
    """One request's entry of SGLang's ``states`` list: the row of a shared `prr_ext.State` that holds its block.

    The handle starts empty (`PrrExt.init_step_state` allocates nothing); the first `PrrExt.step` that sees it
    gives it a row. Its row's counters are the request's decode state for the current block (step in block, LLaDA's
    schedule, NFE) and PRR's trajectory features (argmax history, previous top-1 probability).
    """

    __slots__ = ("group", "row")

    def __init__(self):
        self.group: Optional[State] = None
        self.row: int = -1

    @property
    def nfe(self) -> int:
        """Forwards whose logits this request's current block has consumed (synchronises; 0 before the first)."""
        return 0 if self.group is None else int(self.group.row_state[self.row, RS_NFE])

    def __repr__(self) -> str:
        return f"RequestState(row={self.row})" if self.group is not None else "RequestState(new)"


# The State attributes that hold one request's decode state, row by row ([B, ...]); gathered when the batch's rows
# change. `x` is refreshed from SGLang's input_ids at every step, `workspace` is the CUDA kernel's scratch (zeroed by
# every launch) and `controller_buf` the PRR weights shared by all rows. test_sglang_plugin.py checks that this
# classification covers every tensor a State holds.
ROW_FIELDS = ("row_state", "traj", "prev_p1", "rule_state", "prev_logp", "seed", "prompt_lens")
REFRESHED_FIELDS = ("x",)
SHARED_FIELDS = ("workspace", "controller_buf")


class PrrExt(DllmAlgorithm):
    """SGLang dLLM algorithm that commits with a prr_ext policy (``--dllm-algorithm PrrExt``).

    Parameters
    ----------
    config : sglang.srt.dllm.config.DllmConfig
        SGLang's dLLM config: ``block_size``, ``mask_id``, ``first_done_first_out_mode`` and
        ``algorithm_config``, the mapping read from ``--dllm-algorithm-config`` (see `PrrExtConfig`).

    Examples
    --------
    >>> from sglang.srt.dllm.config import DllmConfig                      # doctest: +SKIP
    >>> algo = PrrExt(DllmConfig("PrrExt", {"policy": "threshold", "tau": 0.9}, block_size=32,
    ...                          mask_id=156895, max_running_requests=8))   # doctest: +SKIP
    >>> algo.run(model_runner, forward_batch)                              # doctest: +SKIP
    """

    def __init__(self, config):
        super().__init__(config)
        self.settings = PrrExtConfig.from_dict(config.algorithm_config, source="--dllm-algorithm-config")
        if not isinstance(self.mask_id, int) or self.mask_id < 0:
            raise ValueError(f"{ALGORITHM_NAME} needs a mask token (mask_id >= 0), got mask_id={self.mask_id}: "
                             "uniform-canvas models (DiffusionGemma) decode with SGLang's Gemma4Renoise")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"{ALGORITHM_NAME}: block_size must be a positive int, got {self.block_size!r}")
        self.policy = self.settings.policy
        self.steps = self.settings.steps or self.block_size
        self.confidence_dtype = CONFIDENCE_DTYPES[self.settings.confidence_dtype]
        # Seeds come from a private generator: every tensor-parallel rank builds the same States in the same order,
        # so all ranks draw the same seeds whatever else uses torch's global generator.
        self.generator = torch.Generator().manual_seed(self.settings.seed)
        # Stands in for prompt tokens on the op's canvas, where a committed token equal to mask_id would otherwise
        # read as masked; any id other than mask_id does (the op only compares canvas tokens with mask_id).
        self.placeholder = 1 if self.mask_id == 0 else 0

    # ---------------------------------------------------------------------------- launch-time checks
    @classmethod
    def configure_server_args(cls, server_args) -> None:
        """Validate the ``--dllm-algorithm-config`` file at launch (before any worker starts); errors name the key.

        Examples
        --------
        >>> PrrExt.configure_server_args(server_args)  # doctest: +SKIP
        """
        path = _server_arg(server_args, "dllm_algorithm_config")
        if path is None:
            raise PrrExtConfigError(f"{ALGORITHM_NAME} needs --dllm-algorithm-config policy.yaml (at least "
                                    f"'policy: <one of {sorted(POLICIES)}>')")
        PrrExtConfig.from_yaml(path)

    # Request features that change the token distribution and that the op does not apply: refused rather than
    # silently ignored. (temperature / top_p / top_k are ignored, as SGLang's built-in dLLM algorithms do: the
    # config's temperature applies to every request.)
    _UNSUPPORTED_SAMPLING = (("frequency_penalty", 0.0), ("presence_penalty", 0.0), ("repetition_penalty", 1.0),
                             ("min_p", 0.0), ("min_new_tokens", 0))
    _UNSUPPORTED_CONSTRAINTS = ("json_schema", "regex", "ebnf", "structural_tag", "logit_bias")

    @classmethod
    def validate_request(cls, req) -> Optional[str]:
        """An error message for a request whose sampling options PrrExt cannot honour, else None."""
        sp = getattr(req, "sampling_params", None)
        bad = []
        if sp is not None:
            bad += [name for name, default in cls._UNSUPPORTED_SAMPLING
                    if getattr(sp, name, default) not in (None, default)]
            bad += [name for name in cls._UNSUPPORTED_CONSTRAINTS if getattr(sp, name, None)]
        if getattr(req, "custom_logit_processor", None):
            bad.append("custom_logit_processor")
        if not bad:
            return None
        return (f"the {ALGORITHM_NAME} dLLM algorithm does not support these request options: {', '.join(bad)} "
                "(its commit rule reads the raw logits)")

    # ---------------------------------------------------------------------------- the step
    def init_step_state(self, forward_batch) -> List[RequestState]:
        """Empty per-request handles; rows are allocated at the first step (SGLang also calls this for requests
        that carry a state, so nothing is built here)."""
        return [RequestState() for _ in range(forward_batch.batch_size)]

    def max_steps(self, block_size: int) -> int:
        # The rules that may commit fewer than the schedule's k_i per step (PRR without the union, SlowFast, KLASS)
        # take up to one step per position; then one more forward must see the finished block.
        return max(self.steps, block_size) + 1

    def step(self, forward_batch, full_logits: torch.Tensor, states: List[Any]) -> List[bool]:
        """Commit one denoising step in place on ``forward_batch.input_ids``; one done flag per request.

        Parameters
        ----------
        forward_batch : ForwardBatch
            ``input_ids`` ``[bs * block_size]`` (updated in place), ``batch_size``, and ``dllm_prompt_mask``
            ``[bs, block_size]`` (True = prompt or committed token, never overwritten) or None.
        full_logits : torch.Tensor
            ``[bs * block_size, V]`` logits of the forward that read the current input_ids.
        states : list of RequestState
            One per request, as returned by `init_step_state` (or carried by SGLang's FDFO loop).

        Returns
        -------
        list of bool
            True for a request whose block held no mask to decode when this step's forward ran (its final tokens
            have been seen by a forward); it commits nothing more.
        """
        bs, bl = forward_batch.batch_size, self.block_size
        if len(states) != bs:
            raise ValueError(f"{ALGORITHM_NAME}.step: {len(states)} states for a batch of {bs}")
        ids = forward_batch.input_ids.view(bs, bl)
        logits = full_logits.reshape(bs, bl, full_logits.shape[-1])
        state = self._batch_state(states, ids.device)
        prompt_mask = getattr(forward_batch, "dllm_prompt_mask", None)
        canvas = state.x
        if prompt_mask is None:  # every non-mask token is a prompt / committed token
            canvas.copy_(ids)
        else:
            canvas.copy_(ids.masked_fill(prompt_mask, self.placeholder))
        # Done = nothing left to decode when the forward ran: no mask on the canvas, or the op already left the block
        # (it does once the block is decoded; only positions with NaN logits could stay masked then).
        done = ~((canvas == self.mask_id).any(1) & (state.row_state[:, RS_BLOCK] < state.num_blocks))
        ops.step(logits, state)
        if prompt_mask is None:
            ids.copy_(canvas)
        else:
            ids.copy_(torch.where(prompt_mask, ids, canvas))
        return done.tolist()

    # ---------------------------------------------------------------------------- per-request state
    def _new_state(self, bs: int, device: torch.device) -> State:
        # Built on the host (State's constructor inspects the canvas, which on a GPU would synchronise), then moved
        # with non-blocking copies. The all-mask canvas is a stand-in: the step refreshes it from input_ids.
        canvas = torch.full((bs, self.block_size), self.mask_id, dtype=torch.int64)
        st = State(canvas, mask_id=self.mask_id, prompt_length=0, block_length=self.block_size, steps=self.steps,
                   policy=self.policy, temperature=self.settings.temperature, generator=self.generator,
                   confidence_dtype=self.confidence_dtype)
        if device.type != "cpu":
            for name, value in list(vars(st).items()):
                if isinstance(value, torch.Tensor):
                    setattr(st, name, _to_device(value, device))
        return st

    def _batch_state(self, states: List[RequestState], device: torch.device) -> State:
        """The State whose row i is request i: the requests' own when they are exactly its rows in order (always in
        synchronous mode after the first step), else a new one with each carried row copied over."""
        for s in states:
            if not isinstance(s, RequestState):
                raise TypeError(f"{ALGORITHM_NAME}.step: states must come from {ALGORITHM_NAME}.init_step_state, got "
                                f"{type(s).__name__}")
        bs = len(states)
        first = states[0].group
        if first is not None and first.x.shape[0] == bs and all(
                s.group is first and s.row == i for i, s in enumerate(states)):
            return first
        new = self._new_state(bs, device)
        sources: Dict[int, Tuple[State, List[int], List[int]]] = {}
        for i, s in enumerate(states):
            if s.group is not None:
                sources.setdefault(id(s.group), (s.group, [], []))
                sources[id(s.group)][1].append(s.row)
                sources[id(s.group)][2].append(i)
        for old, src_rows, dst_rows in sources.values():
            src = _to_device(torch.tensor(src_rows, dtype=torch.int64), device)
            dst = _to_device(torch.tensor(dst_rows, dtype=torch.int64), device)
            for name in ROW_FIELDS:
                have = getattr(old, name)
                if have.numel() == 0:  # KLASS's prev_logp before its first step: nothing kept yet
                    continue
                want = getattr(new, name)
                if tuple(want.shape[1:]) != tuple(have.shape[1:]):  # allocated lazily by the op (prev_logp)
                    want = have.new_zeros((bs,) + tuple(have.shape[1:]))
                    setattr(new, name, want)
                want.index_copy_(0, dst, have.index_select(0, src))
        for i, s in enumerate(states):
            s.group, s.row = new, i
        return new


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Host -> GPU without a host synchronisation: from pinned memory (PyTorch's caching host allocator keeps the
    # block alive until the copy has run), as SGLang itself stages its per-batch tensors.
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _server_arg(server_args, name: str):
    # SGLang >= 0.5.23 resolves arguments through a view (launch-time overrides); older ones are plain attributes.
    try:
        from sglang.srt.arg_groups.overrides import resolving_view

        return getattr(resolving_view(server_args), name)
    except (ImportError, AttributeError):
        return getattr(server_args, name, None)


def register() -> None:
    """SGLang plugin entry point (``sglang.srt.plugins``: ``prr_ext``): add `PrrExt` to SGLang's dLLM algorithms.

    SGLang's ``load_plugins()`` calls it early in every server process, before the algorithm is looked up by its
    ``--dllm-algorithm`` name.

    Examples
    --------
    >>> from sglang.srt.plugins import load_plugins
    >>> load_plugins()                                    # doctest: +SKIP
    >>> from sglang.srt.dllm.algorithm import get_algorithm_cls
    >>> get_algorithm_cls("PrrExt")                        # doctest: +SKIP
    <class 'prr_ext.integrations.sglang.PrrExt'>
    """
    from sglang.srt.dllm.algorithm import algo_name_to_cls

    algo_name_to_cls[ALGORITHM_NAME] = PrrExt
