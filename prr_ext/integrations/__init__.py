"""Integrations of `prr_ext.step` into other libraries' decode loops (serving engines, transformers, diffusers).

Each submodule imports its library on import; `import prr_ext` imports none of them.
"""
