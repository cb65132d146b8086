"""Online serving of a package built by the pipeline: a KServe model server and its client.

Nothing here imports torch, sklearn, mlflow or dvc: the serve image has only the `serve` extra.
"""
