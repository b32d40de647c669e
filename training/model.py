"""1D EfficientNet encoder (MBConv + squeeze-excite) and the projection head.

    x (B, C, 3840)
      -> stem conv k3 s2 -> BN -> SiLU
      -> 16 MBConv1d blocks in 7 stages (expand 1x1 -> depthwise k3/k5 -> SE 0.25 -> project 1x1)
      -> head conv 1x1 -> BN -> SiLU -> global average pool -> embedding (B, 256)
    projection head: 256 -> 1024 -> 128 (BN, ReLU, dropout 0.1)

Stage table as EfficientNet-B0 (kernel, stride, repeats), expansion 7 after the first stage as
in the recipe, widths scaled per modality so that PPG ~3.3 M and ECG ~2.5 M parameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# (expansion, kernel, stride, out_channels, repeats) - EfficientNet-B0's stage table, 16 blocks
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (7, 3, 2, 24, 2),
    (7, 5, 2, 40, 2),
    (7, 3, 2, 80, 3),
    (7, 5, 1, 112, 3),
    (7, 5, 2, 192, 4),
    (7, 3, 1, 320, 1),
)


@dataclass(frozen=True)
class EncoderConfig:
    in_channels: int = 4
    width: float = 1.0  # multiplies every stage's channels
    depth: float = 1.0  # multiplies every stage's repeats
    stem_channels: int = 32
    embed_dim: int = 256
    se_ratio: float = 0.25
    drop_path: float = 0.1
    stages: tuple[tuple[int, int, int, int, int], ...] = field(default=B0_STAGES)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        d = dict(d)
        d["stages"] = tuple(tuple(s) for s in d["stages"])
        return cls(**d)


def _round(c: float, divisor: int = 8) -> int:
    return max(divisor, int(c + divisor / 2) // divisor * divisor)


class SqueezeExcite1d(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv1d(channels, reduced, 1)
        self.expand = nn.Conv1d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        s = x.mean(dim=-1, keepdim=True)  # (B, C, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class MBConv1d(nn.Module):
    def __init__(
        self, cin: int, cout: int, expansion: int, kernel: int, stride: int, se_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv1d(cin, hidden, 1, bias=False), nn.BatchNorm1d(hidden), nn.SiLU()]
        layers += [
            nn.Conv1d(hidden, hidden, kernel, stride, padding=kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.SiLU(),
            SqueezeExcite1d(hidden, max(1, int(cin * se_ratio))),
            nn.Conv1d(hidden, cout, 1, bias=False),
            nn.BatchNorm1d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:  # stochastic depth, per sample
            keep = torch.rand(x.shape[0], 1, 1, device=x.device, dtype=x.dtype) >= self.drop_path
            y = y * keep / (1 - self.drop_path)
        return x + y


class EfficientNet1d(nn.Module):
    """Encoder: (B, C, T) -> (B, embed_dim)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        stem = _round(cfg.stem_channels * cfg.width)
        self.stem = nn.Sequential(
            nn.Conv1d(cfg.in_channels, stem, 3, 2, padding=1, bias=False), nn.BatchNorm1d(stem), nn.SiLU()
        )
        blocks: list[nn.Module] = []
        cin = stem
        total = sum(math.ceil(r * cfg.depth) for *_, r in cfg.stages)
        for expansion, kernel, stride, cout, repeats in cfg.stages:
            cout = _round(cout * cfg.width)
            for i in range(math.ceil(repeats * cfg.depth)):
                rate = cfg.drop_path * len(blocks) / max(1, total - 1)
                blocks.append(
                    MBConv1d(cin, cout, expansion, kernel, stride if i == 0 else 1, cfg.se_ratio, rate)
                )
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv1d(cin, cfg.embed_dim, 1, bias=False), nn.BatchNorm1d(cfg.embed_dim), nn.SiLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x))).mean(dim=-1)  # (B, embed_dim)


class ProjectionHead(nn.Module):
    """MLP embed_dim -> hidden -> out_dim; no predictor."""

    def __init__(
        self, in_dim: int = 256, hidden: int = 1024, out_dim: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ContrastiveModel(nn.Module):
    """Encoder + projection head; the encoder is what gets exported and served."""

    def __init__(self, encoder: EfficientNet1d, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)  # (B, 256)
        return h, self.head(h)  # (B, 256), (B, 128)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
