"""The real runner: the simulator's policies executed on a real model.

``models`` (named random-weight Llama shapes or a local checkpoint), ``paged`` (preallocated
paged KV cache and the packed forward step), ``executor`` (runs a StepPlan for real),
``engine`` (the serving loop on a virtual clock), ``profiler`` + ``fit`` (measure step times
and write a simulator profile) and ``validate`` (real vs simulated metrics). torch is only
imported by the modules that run a model.
"""
