from .mumford_shah import BiasFieldMumfordShahLoss, MumfordShahLoss, SemiSupervisedMumfordShahLoss
from .acwe import ACWELoss, ACWEWithLabelLoss, ActiveContourLabelLoss, LabelOnlyLoss
from .selective import DIPSelectiveLoss, SelectiveLoss, weighted_tv
from .quality import QualityRegularisedDiceLoss, hard_dice
