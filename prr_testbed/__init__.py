"""prr_testbed: a small masked-diffusion LM, its tasks and the tools that measure prr_ext's commit rules on it."""
