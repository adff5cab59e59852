"""The committed generated code is what gen.sh makes from the .proto today."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run([str(HERE / "gen.sh"), str(tmp_path)], check=True, env=env)
    for name in ("forwarding_pb2.py", "forwarding_pb2_grpc.py"):
        committed = (HERE / "src/forwarding_adapter/_pb" / name).read_text()
        assert (tmp_path / name).read_text() == committed, f"{name} is stale: run adapters/python/gen.sh"
