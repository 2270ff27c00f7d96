import subprocess
import sys


def test_torchvision_imports_after_compat_step_and_step_is_idempotent():
    code = (
        "from resynth_index._torchvision_compat import ensure_torchvision_importable as e\n"
        "first = e(); second = e()\n"
        "import torchvision, open_clip, timm\n"
        "from torchvision.transforms import functional\n"
        "assert first in ('native', 'declared'), first\n"
        "assert second == first, (first, second)\n"
        "print(first)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("native", "declared")


def test_compat_step_is_noop_after_torchvision_imported():
    # Once torchvision is importable (natively or via an earlier declaration), calling again changes nothing.
    code = (
        "import resynth_index, torchvision\n"
        "from resynth_index._torchvision_compat import ensure_torchvision_importable as e\n"
        "import torch\n"
        "assert hasattr(torch.ops.torchvision, 'nms')\n"
        "print(e())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("native", "declared")
