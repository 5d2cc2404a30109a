"""lmms-eval task YAMLs over local, offline copies of the papers' benchmarks, and their fixture generators.

Each benchmark folder holds `<name>_local` YAMLs (built-in names would shadow ours) and a utils.py that reuses
lmms-eval's own functions. The YAMLs read `data/<benchmark>/<split>.parquet` beside them (tasks/data), which
`modbench data fixtures` or `modbench data prepare` write (tasks/data may be a link to $MODBENCH_DATA).
"""
