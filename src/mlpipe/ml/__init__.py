"""Your ML code: the four stages of dvc.yaml (`mlpipe <stage>` runs `ml/<stage>.py`), the model,
the dataset readers, the ONNX export and the evaluation figures. This is what a team edits to
make the template its own; it imports `tracking`, `contracts` and `core`."""
