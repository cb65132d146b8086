"""The dataset readers; `sources.load_source` loads the one params.yaml names."""
