"""The network side's facts and builders: the backbone registry, the feature network, BatchNorm folding, stages."""
