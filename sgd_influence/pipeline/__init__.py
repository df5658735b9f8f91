"""The drivers' four phases cut into independent units (experiment) and where the units run:
this process or a process pool (runner), or the workers of a Dask scheduler (cluster)."""
