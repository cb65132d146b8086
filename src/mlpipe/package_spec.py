"""The serving package's layout: shared by the package stage that writes it and the server
that reads it (NumPy-free and torch-free, for the slim serve image)."""

PACKAGE_FORMAT = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "package.json"
CARD_FILE = "MODEL_CARD.md"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
PROFILE_FILE = "profile.json"  # the training data's drift profile (mlpipe.drift.Profile)
