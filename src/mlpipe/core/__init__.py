"""The ground floor: paths, params, errors, atomic writes, tables, numerics, git/DVC, lineage,
the torchrun process group. Imports nothing else of mlpipe."""
