"""Label-free and probe-based measures of center signal: the PathoROB robustness index, APD,
the clustering score, and the kNN search, linear probe and statistics they rest on."""
