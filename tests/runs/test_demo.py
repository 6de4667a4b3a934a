"""art-some demo --device: checked before any file is written."""
import pytest
import torch
from click.testing import CliRunner

from art_some.cli import cli


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_demo_refuses_cuda_without_a_gpu_before_writing(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--device", "cuda", "--output-dir", str(out), "--epochs", "1"])
    assert result.exit_code == 2
    assert "--device cuda was requested but no CUDA device is available" in result.output
    assert not out.exists()


def test_demo_names_the_devices_it_takes():
    result = CliRunner().invoke(cli, ["demo", "--device", "tpu"])
    assert result.exit_code == 2 and "'--device'" in result.output and "'auto', 'cpu', 'cuda'" in result.output
