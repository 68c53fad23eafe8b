import pytest

from gznq.cli.train_cli import main as train_main


@pytest.fixture(scope="session")
def generator_dir(weights_dir, tmp_path_factory):
    """A generator for ResNet-20 trained for 3 steps: enough to exercise every command that reads one."""
    out = tmp_path_factory.mktemp("cli") / "gen"
    code = train_main(["generator", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
                       "--steps", "3", "--batch-size", "16", "--width", "32", "--out", str(out), "--no-progress"])
    assert code == 0
    return out
