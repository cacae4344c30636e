"""Adapters that plug prr_ext's commit rules into serving engines and pipelines.

Each submodule imports its engine, so `import prr_ext` never does:

* `prr_ext.integrations.diffusers`: `PolicyScheduler`, a scheduler for diffusers' `LLaDA2Pipeline`
  (`pip install prr_ext[diffusers]`).
"""
