"""Adapters that plug prr_ext's commit rules into serving engines and pipelines.

Each submodule imports its engine and is imported only on demand (``import prr_ext`` never pulls an engine in):

* ``prr_ext.integrations.sglang``: the ``PrrExt`` dLLM algorithm for SGLang (``--dllm-algorithm PrrExt``),
  registered by the ``prr_ext`` entry point of group ``sglang.srt.plugins``.

See docs/engines.md.
"""
