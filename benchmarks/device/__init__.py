"""The device check: prove the GPU path on a bare, offline GPU machine (benchmarks/device_check.sh).

wheels.py   fill the carried wheel folder (cp312 manylinux), repacking the big wheels
shapes.py   carried model "shape" folders (config + tokenizer) and random weights built from them
results.py  one JSON + one markdown table, rewritten after every part
check.py    the parts, each time-boxed in its own process, against one overall deadline
smoke.py    the smoke pipeline in-process: prepare, train 4-bit and 16-bit, evaluate, export, serve

Nothing here is imported by polo_lib; only smoke.py imports polo_lib.
"""
