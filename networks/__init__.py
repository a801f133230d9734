from __future__ import annotations

from .polyphase_unet import PolyphasePool, PolyphaseUNet, PolyphaseUnpool, polyphase_pool, polyphase_unpool
from .rcnn import RCNN, RecurrentConvBlock, RecurrentStep
from .selective import DIPNet, SelectivePair, SelectiveUNet, VMNet
from .quality_unet import QualityOutput, QualityUNet
