"""Exceptions a user can act on; the CLI prints them as one line and exits non-zero."""


class MlpipeError(Exception):
    """Base class for errors caused by input, configuration or the environment."""


class ParamsError(MlpipeError):
    """params.yaml is missing, malformed or holds an invalid value."""


class DataError(MlpipeError):
    """A dataset file is missing, corrupt or inconsistent."""


class ArtifactError(MlpipeError):
    """A pipeline artifact (prepared data, checkpoint, package) is missing or invalid."""


class TrackingError(MlpipeError):
    """The MLflow tracking server or model registry failed or is unreachable."""


class TuningError(MlpipeError):
    """tune.yaml is invalid, or a study cannot run or continue."""
