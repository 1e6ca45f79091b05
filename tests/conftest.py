"""Shared by tests/unit and tests/e2e: pytest puts this directory on sys.path (rootdir
conftest), so helper modules kept here, such as invalid_manifests.py (the invalid
ModelDeployment corpus) and fake_hub.py (a Hugging Face Hub stand-in), import from both
layers."""
