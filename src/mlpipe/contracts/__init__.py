"""What the stages hand on and the server reads, each read and written one way: the prepared
splits and their schema, the input preprocessing, the package manifest, the drift profile, the
test predictions and their comparison. Imports `core` only."""
