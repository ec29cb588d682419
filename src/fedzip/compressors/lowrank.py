"""``lowrank``: every weight matrix as a rank-``rank`` product of quantised factors.

Low-rank compression of updates as in PowerSGD (Vogels, Karimireddy, Jaggi,
NeurIPS 2019) and ATOMO (Wang et al., NeurIPS 2018); the maths and the body
layout are in :mod:`fedzip.factors`. Use it with error feedback
(``lowrank+ef``): what the product misses carries over to the next round.
"""

from __future__ import annotations

import numpy as np

from ..factors import ENCODING_ID, MAX_RANK, pack_dense, pack_factors
from ..packing import Packed, check_int
from ..quantize import MAX_CLUSTERS
from ..registry import register
from .base import TensorCompressor


@register
class LowRank(TensorCompressor):
    """Rank-``rank`` factors of every weight matrix, entries k-means-quantised to ``clusters`` levels.

    ``iterations`` steps of subspace iteration (2 is PowerSGD's one step done
    twice, from a start drawn with ``seed`` so that encoding is deterministic).
    """

    codec_id = "lowrank"
    norm_bounded = False  # quantising the factors can lengthen the product
    encoding = ENCODING_ID

    def __init__(self, rank: int = 1, clusters: int = 8, iterations: int = 2, seed: int = 0) -> None:
        self.rank = check_int("rank", rank, 1, MAX_RANK)
        self.clusters = check_int("clusters", clusters, 2, MAX_CLUSTERS)
        self.iterations = check_int("iterations", iterations, 1, 100)
        self.seed = check_int("seed", seed, 0, (1 << 63) - 1)

    def pack_tensor(self, array: np.ndarray) -> Packed:
        return pack_factors(array, self.rank, self.clusters, self.iterations, self.seed)

    def pack(self, flat: np.ndarray) -> Packed:
        return pack_dense(flat, self.clusters)
