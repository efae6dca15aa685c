"""events/<function>.json: one sample per function, usable with `sam local invoke`."""

import json

import pytest

from tests.support import FUNCTIONS, ROOT, invoke

NAMES = sorted(p.name for p in FUNCTIONS.iterdir() if (p / "app.py").is_file())


@pytest.mark.parametrize("name", NAMES)
def test_sample_event_exists_and_is_served(aws, name):
    path = ROOT / "events" / f"{name}.json"
    assert path.is_file(), f"add a sample event {path.relative_to(ROOT)}"
    evt = json.loads(path.read_text())
    assert evt["version"] == "2.0"
    if name == "admin_user_get":  # the sample's user exists once they have used the API
        invoke("credits_get", json.loads((ROOT / "events" / "credits_get.json").read_text()))
    status, _, body = invoke(name, evt)
    assert 200 <= status < 300, body
