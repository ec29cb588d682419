"""Every compressor, under one interface and one registry.

=========  ==========================================================  ==============================
id         what travels                                                from
=========  ==========================================================  ==============================
none       every value as it is (FedAvg)                               McMahan et al., AISTATS 2017
fp16       every value as float16                                      Micikevicius et al., ICLR 2018
topk       top ``keep`` entries as uint32 index + float32 value        Aji & Heafield 2017; Lin et al. 2018
qsgd       stochastic ``levels``-level quantisation per ``bucket``     Alistarh et al., NeurIPS 2017
signsgd    one sign bit per entry + mean magnitude                     Bernstein et al. 2018; Karimireddy et al. 2019
stc        top ``keep``, ternary +-mu, Golomb-coded gaps               Sattler et al., IEEE TNNLS 2019
lowrank    rank-``rank`` factors of each matrix, k-means entries      Vogels et al. (PowerSGD), NeurIPS 2019
fedzip     top ``keep``, k-means ``clusters``, huffman/position/dap    Malekijoo et al., arXiv 2102.01593
=========  ==========================================================  ==============================
"""

from ..abc import Compressor
from ..codec import FedZip
from ..registry import available, get_compressor, register
from .fp16 import Float16
from .lowrank import LowRank
from .qsgd import QSGD
from .raw import NoCompression
from .signsgd import SignSGD
from .stc import STC
from .topk import TopK

__all__ = [
    "QSGD",
    "STC",
    "Compressor",
    "FedZip",
    "Float16",
    "LowRank",
    "NoCompression",
    "SignSGD",
    "TopK",
    "available",
    "get_compressor",
    "register",
]
