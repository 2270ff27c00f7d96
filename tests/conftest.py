import os

# Tests never reach a model hub: everything they load is built in code or shipped by a registry package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import resynth_index  # noqa: E402,F401  - installs the torchvision compatibility step first
