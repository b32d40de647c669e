from __future__ import annotations

import pytest
import torch

from training.config import PRESETS, apply_overrides
from training.model import EfficientNet1d, MBConv1d, ProjectionHead, SqueezeExcite1d, count_parameters
from training.train import build_model


@pytest.mark.parametrize(
    ("preset", "channels", "lo", "hi"), [("ppg", 4, 3.0e6, 3.6e6), ("ecg", 1, 2.2e6, 2.8e6)]
)
def test_encoder_parameter_counts(preset: str, channels: int, lo: float, hi: float) -> None:
    cfg = PRESETS[preset]
    enc = EfficientNet1d(cfg.encoder)
    n = count_parameters(enc)
    print(f"{preset}: encoder {n:,} parameters")
    assert lo <= n <= hi
    assert cfg.encoder.in_channels == channels
    assert sum(isinstance(m, MBConv1d) for m in enc.modules()) == 16
    assert sum(isinstance(m, SqueezeExcite1d) for m in enc.modules()) == 16
    assert {m.kernel_size[0] for m in enc.modules() if isinstance(m, torch.nn.Conv1d) and m.groups > 1} == {
        3,
        5,
    }


def test_shapes_and_head() -> None:
    cfg = PRESETS["tiny"]
    model = build_model(cfg).eval()
    h, z = model(torch.randn(3, 4, 3840))
    assert h.shape == (3, 256) and z.shape == (3, cfg.head_out)
    head = ProjectionHead()
    assert [m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)] == [1024, 128]
    ecg = EfficientNet1d(PRESETS["ecg"].encoder).eval()
    assert ecg(torch.randn(2, 1, 3840)).shape == (2, 256)


def test_overrides() -> None:
    cfg = apply_overrides(PRESETS["tiny"], ["lr=3e-4", "encoder.width=0.5", "use_momentum=false"])
    assert cfg.lr == 3e-4 and cfg.encoder.width == 0.5 and cfg.use_momentum is False
    with pytest.raises(ValueError, match="bad override"):
        apply_overrides(cfg, ["nope=1"])
