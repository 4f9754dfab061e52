"""docs/tokens.md: its Python and Node examples mint tokens the service accepts, with the
key id the service expects, and a rotation's overlap covers them."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.unit.helpers import granted
from wssfleet import auth
from wssfleet_control.checkout import REPO

DOC = REPO / "docs" / "tokens.md"
KEY = "the-applications-signing-key-long-enough-0123456789"
NEXT_KEY = "the-key-after-a-rotation-long-enough-012345678901"


def example(language: str) -> str:
    [code] = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL)
    return code


def test_the_python_example_mints_what_the_service_accepts():
    namespace: dict = {}
    exec(example("python"), namespace)
    token = namespace["mint"](KEY, "alice", ttl=600, subscribe=["lobby"], publish=["lobby"])
    grant = auth.verify(KEY, token, max_ttl=3600)
    assert granted(grant) == ("alice", ("lobby",), ("lobby",))
    # Through a rotation's overlap, then not.
    assert auth.verify(NEXT_KEY, token, previous=KEY).subject == "alice"
    with pytest.raises(auth.TokenError, match="unknown signing key"):
        auth.verify(NEXT_KEY, token)


def test_the_node_example_mints_what_the_service_accepts(tmp_path):
    module = tmp_path / "mint.mjs"
    module.write_text(example("javascript"))
    call = (
        f"import {{ mint }} from {json.dumps(str(module))};"
        f"console.log(mint({json.dumps(KEY)}, 'bob', {{ ttl: 600, subscribe: ['user.bob.*'] }}));"
    )
    result = subprocess.run(
        ["node", "--input-type=module", "-e", call], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert granted(auth.verify(KEY, token, max_ttl=3600)) == ("bob", ("user.bob.*",), None)
    assert auth.verify(NEXT_KEY, token, previous=KEY).subject == "bob"
