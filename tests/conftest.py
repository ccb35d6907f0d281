import os

import pytest

# Nothing in the test suite may reach a model or data hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ess9():
    from dsalib.surveys import load_survey

    return load_survey("ess9", source="embedded")
