"""Adapters that plug prr_ext's commit rules into serving engines, pipelines and other libraries' decode loops.

Each submodule imports its library on import; `import prr_ext` imports none of them (see docs/engines.md):

* `prr_ext.integrations.sglang`: the `PrrExt` dLLM algorithm for SGLang (`--dllm-algorithm PrrExt`), registered by
  the `prr_ext` entry point of group `sglang.srt.plugins` (`pip install prr_ext[sglang]`).
* `prr_ext.integrations.diffusers`: `PolicyScheduler`, a scheduler for diffusers' `LLaDA2Pipeline`
  (`pip install prr_ext[diffusers]`).
* `prr_ext.integrations.diffusion_gemma`: `PolicyDiffusionGemma` / `with_policy`, a prr_ext rule as the sampler of
  transformers' DiffusionGemma `generate` (`pip install prr_ext[hf]`).
"""
