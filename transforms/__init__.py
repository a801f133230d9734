from .guidance import (
    ChanVeseFitting,
    ChanVeseFittingd,
    ChanVeseFittingD,
    ChanVeseFittingDict,
    EdgeIndicator,
    EdgeIndicatord,
    EdgeIndicatorD,
    EdgeIndicatorDict,
    GeodesicDistance,
    GeodesicDistanced,
    GeodesicDistanceD,
    GeodesicDistanceDict,
)
from .intensity import LITS_WINDOW, HUWindow, HUWindowd, HUWindowD, HUWindowDict, check_hounsfield
from .slices import (
    StackAdjacentSlices,
    StackAdjacentSlicesd,
    StackAdjacentSlicesD,
    StackAdjacentSlicesDict,
    UnstackSlices,
    UnstackSlicesd,
    UnstackSlicesD,
    UnstackSlicesDict,
    adjacent_slice_indices,
)
