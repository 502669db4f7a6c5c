"""The browser tier uses the workspace tests' seeded patients, API client and clinician."""

from tests.dashboard.conftest import api, seeded, workspace_env  # noqa: F401 - fixtures
