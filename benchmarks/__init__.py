"""dpt-jax's benchmark harness: speed, memory and FLOP efficiency, side by side with PyTorch.

Not part of the installed package: it lives in the repository and runs from it
(`python benchmarks/run_benchmarks.py`, `python benchmarks/bench.py ...`; see README.md here).
Every model is built at its real architecture with random weights: no checkpoint is read.

    flops.py           analytic FLOP count (the family counts its encoder), traced count, XLA count
    measure.py         host memory, machine description, matmul peak, the JAX half of a row
    torch_side.py      the Hugging Face transformers model of the same architecture, its timing and FLOPs
    rows.py            one benchmark row (JAX then PyTorch), by default in a fresh process
    startup.py         fresh-process time to first result, cold vs warm compilation cache
    convert_memory.py  converter peak memory on a synthesized full-size checkpoint
    report.py          markdown tables and result files
    bench.py           command line of the pieces; run_benchmarks.py: the standard set

It builds on dpt_jax (dpt_jax.timing is the small `dpt-jax bench`); dpt_jax never imports it.
"""
